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
}
