// Sinks users set (issue 13): the static TOPICS literal read at register time, the config file's
// [topics.NAME] overrides, and the effective table DISPATCH carries.
using Xunit;

namespace Casparian.Tests;

public sealed class TopicsTests
{
    [Fact]
    public void Topics_Read_TakesTheLiteralAcrossLinesWithCommentsAndTrailingCommas()
    {
        const string source = """
            name = "sales"

            TOPICS = {
                "sales": {"sink": "parquet://sales", "mode": "append"},  # the main table
                'rejects': {'mode': 'replace',},
            }

            def parse(path):
                TOPICS = "ignored: not at column 0"
            """;
        var topics = Topics.Read(source, "parser.py");
        Assert.Equal([new TopicSetting("sales", "parquet://sales", SinkMode.Append, "parser.py"), new TopicSetting("rejects", null, SinkMode.Replace, "parser.py")], topics);
        Assert.Empty(Topics.Read("def parse(path):\n    return []\n", "p.py"));
    }

    [Theory]
    // Not a literal: a name.
    [InlineData("TOPICS = SINKS", "expected '{'")]
    // A value that is not a string literal.
    [InlineData("TOPICS = {\"sales\": {\"mode\": APPEND}}", "expected a string literal")]
    // An f-string.
    [InlineData("TOPICS = {\"sales\": {\"sink\": f\"parquet://{x}\"}}", "expected a string literal")]
    // An unknown key.
    [InlineData("TOPICS = {\"sales\": {\"path\": \"x\"}}", "unknown key 'path'")]
    // A bad mode.
    [InlineData("TOPICS = {\"sales\": {\"mode\": \"upsert\"}}", "mode 'upsert'")]
    // A compression codec Parquet output does not know (issue 12).
    [InlineData("TOPICS = {\"sales\": {\"compression\": \"lzma\"}}", "topic 'sales': compression 'lzma' is not none, snappy, zstd, lz4 or gzip")]
    // A bad topic name.
    [InlineData("TOPICS = {\"Sales\": {}}", "topic name 'Sales' is invalid")]
    // A sink that climbs out.
    [InlineData("TOPICS = {\"sales\": {\"sink\": \"parquet://../x\"}}", "contains '..'")]
    // Appending to a single file.
    [InlineData("TOPICS = {\"sales\": {\"sink\": \"sales.parquet\"}}", "mode append cannot add to")]
    // Not closed.
    [InlineData("TOPICS = {\"sales\": {}", "found the end of the file")]
    public void Topics_Read_RefusesAnythingButTheStaticForm_NamingFileAndLine(string line, string message)
    {
        var e = Assert.Throws<InputException>(() => Topics.Read("name = \"p\"\n" + line + "\n", "parser.py"));
        Assert.StartsWith("parser.py:2: ", e.Message);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Topics_Effective_ConfigOverridesFieldByField_AndAddsTopics()
    {
        var declared = new List<TopicSetting> { new("sales", "parquet://sales", SinkMode.Append, "p"), new("rejects", null, SinkMode.Replace, "p") };
        var config = new List<TopicSetting> { new("sales", "parquet://warehouse/sales", null, "c:3"), new("audit", null, SinkMode.Error, "c:6") };
        var sinks = Topics.Effective(declared, config);
        Assert.Equal([("sales", "parquet://warehouse/sales", SinkMode.Append), ("rejects", "parquet://rejects", SinkMode.Replace), ("audit", "parquet://audit", SinkMode.Error)],
            sinks.Select(s => (s.Topic, s.Uri, s.Mode)));
        Assert.Equal("config c:3", Topics.OriginOf("sales", declared, config));
        Assert.Equal("parser", Topics.OriginOf("rejects", declared, config));
        Assert.Equal(declared, Topics.FromJson(Topics.ToJson(declared), "p"));
    }
    [Fact]
    public void Topics_ContractKeys_FromTopicsAndConfig_MergeFieldByField_IntoSchemaDef()
    {
        var declared = Topics.Read("TOPICS = {\"sales\": {\"schema\": {\"id\": \"int64\", \"amount\": \"decimal(10,2)?\"}, \"contract\": \"discard_row\", \"max_quarantine\": 0.25}}\n", "parser.py");
        var config = Topics.FromConfig([new ConfigTable("c.toml", "topics.sales", 1, false, [new ConfigEntry("contract", new ConfigValue("freeze"), 2)])]);
        var sink = Assert.Single(Topics.Effective(declared, config));
        Assert.Equal("""{"columns":[{"name":"id","type":"int64","nullable":false},{"name":"amount","type":"decimal(10,2)","nullable":true}],"contract":"freeze","max_quarantine":0.25}""", sink.SchemaDef);
        // Stored with the parser and read back.
        Assert.Equal(declared[0].Contract!.ToJson(), Topics.FromJson(Topics.ToJson(declared), "p")[0].Contract!.ToJson());

        // A schema as an inline table; a max_quarantine above 1 is refused naming the table.
        var schema = new ConfigEntry("schema", new ConfigValue(null, Table: [new ConfigEntry("id", new ConfigValue("int64"), 2)]), 2);
        Assert.Equal("""{"columns":[{"name":"id","type":"int64","nullable":false}]}""",
            Topics.FromConfig([new ConfigTable("c.toml", "topics.x", 1, false, [schema])])[0].Contract!.ToJson());
        var e = Assert.Throws<InputException>(() => Topics.FromConfig([new ConfigTable("c.toml", "topics.x", 1, false, [schema, new ConfigEntry("max_quarantine", new ConfigValue("2"), 3)])]));
        Assert.Equal("c.toml:1: [topics.x] topic 'x': max_quarantine 2 is not a fraction from 0 to 1", e.Message);
    }
}
