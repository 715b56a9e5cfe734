// Sinks users set (issue 13). A parser declares its topics in its entry module, in a static form read
// at register time without running the parser:
//
//   TOPICS = {"sales": {"sink": "parquet://sales", "mode": "append"}}
//
// a dict literal at column 0 (it may span lines) whose keys are topic names and whose values are dicts
// of string literals: "sink" (a uri, SPEC §7; default parquet://TOPIC), "mode" (append, replace,
// error; default append), "compression" (a Parquet codec, Output.Codec.cs; default the worker's
// `compression` setting), and the schema contract's "schema", "contract", "max_quarantine"
// (Topics.Contract.cs). Anything else (a name, a call, an f-string, a number) is refused at
// register time, naming the line. The config file overrides a topic, whatever the parser:
//
//   [topics.sales]
//   sink = "parquet://warehouse/sales"
//   mode = "replace"
//
// The sentinel sends the effective table in DISPATCH `sinks`; the worker resolves and checks every
// uri against its own output root and allowed roots, so nothing here can make it write elsewhere.
using System.Text;

namespace Casparian;

/// <summary>A topic's sink as a parser or the config file sets it; a null field leaves the other layer's (or the default).</summary>
internal sealed record TopicSetting(string Topic, string? Sink, SinkMode? Mode, string Origin, SchemaContract? Contract = null)
{
    /// <summary>The topic's Parquet codec by name, checked when read (Output.Codec.cs); null: the worker's <c>compression</c> setting.</summary>
    public string? Compression { get; init; }
}

internal static partial class Topics
{
    public const string ConfigTable = "topics";

    /// <summary>The <c>TOPICS</c> literal of <paramref name="source"/> (none: empty); <paramref name="origin"/> names the file in errors.</summary>
    public static List<TopicSetting> Read(string source, string origin)
    {
        var lines = source.TrimStart('\uFEFF').Split('\n');
        int start = Array.FindLastIndex(lines, l => l.StartsWith("TOPICS", StringComparison.Ordinal) && l[6..].TrimStart().StartsWith('='));
        if (start < 0) return [];
        string text = string.Join("\n", lines[start..]);
        var reader = new LiteralReader(text[(text.IndexOf('=') + 1)..], origin, start + 1);
        var topics = new List<TopicSetting>();
        reader.Expect('{');
        while (!reader.TryTake('}'))
        {
            string topic = reader.String();
            if (!Bridge.IsValidTopic(topic)) throw reader.Error($"topic name '{topic}' is invalid; topic names match [a-z][a-z0-9_]*");
            reader.Expect(':');
            reader.Expect('{');
            string? sink = null;
            SinkMode? mode = null;
            string? compression = null;
            var contract = new ContractDeclaration();
            while (!reader.TryTake('}'))
            {
                string key = reader.String();
                reader.Expect(':');
                if (ContractDeclaration.Keys.Contains(key))
                {
                    contract.Read(topic, key, reader);
                }
                else
                {
                    string value = reader.String();
                    switch (key)
                    {
                        case "sink": sink = value; break;
                        case "mode": mode = Mode(value) ?? throw reader.Error($"topic '{topic}': mode '{value}' is not append, replace or error"); break;
                        case "compression": compression = Codec(value) ?? throw reader.Error($"topic '{topic}': compression '{value}' is not {ParquetCodecs.Names}"); break;
                        default: throw reader.Error($"topic '{topic}': unknown key '{key}'; a topic takes {ContractDeclaration.KeyList}");
                    }
                }
                if (!reader.TryTake(',')) { reader.Expect('}'); break; }
            }
            if (topics.Exists(t => t.Topic == topic)) throw reader.Error($"topic '{topic}' is declared twice");
            var declared = contract.Build(topic, reader.Error, requireSchema: true);
            topics.Add(new TopicSetting(topic, sink, mode, origin, declared) { Compression = compression });
            if (!reader.TryTake(',')) { reader.Expect('}'); break; }
        }
        foreach (var t in topics) Check(t, $"{origin}:{start + 1}");
        return topics;
    }

    /// <summary>The config file's <c>[topics.NAME]</c> tables.</summary>
    public static List<TopicSetting> FromConfig(IEnumerable<ConfigTable> tables)
    {
        var list = new List<TopicSetting>();
        foreach (var table in tables)
        {
            string origin = $"{table.File}:{table.Line}";
            string[] parts = table.Name.Split('.');
            if (parts.Length != 2 || table.ArrayItem || !Bridge.IsValidTopic(parts[1]))
                throw new InputException($"{origin}: [{table.Name}] is not a topic table; write [topics.NAME] with NAME matching [a-z][a-z0-9_]*");
            string? sink = null;
            SinkMode? mode = null;
            string? compression = null;
            var contract = new ContractDeclaration();
            foreach (var e in table.Entries)
            {
                string where = $"{table.File}:{e.Line}";
                if (ContractDeclaration.Keys.Contains(e.Key))
                {
                    contract.Read(table.Name, e, where);
                    continue;
                }
                if (e.Value.Text is not { } text || e.Value.Items is not null || e.Value.Table is not null)
                    throw new InputException($"{where}: [{table.Name}] {e.Key} must be a string");
                switch (e.Key)
                {
                    case "sink": sink = text; break;
                    case "mode": mode = Mode(text) ?? throw new InputException($"{where}: [{table.Name}] mode '{text}' is not append, replace or error"); break;
                    case "compression": compression = Codec(text) ?? throw new InputException($"{where}: [{table.Name}] compression '{text}' is not {ParquetCodecs.Names}"); break;
                    default: throw new InputException($"{where}: [{table.Name}] has unknown key '{e.Key}'; a topic takes {ContractDeclaration.KeyList.Replace("\"", "", StringComparison.Ordinal)}");
                }
            }
            var setting = new TopicSetting(parts[1], sink, mode, origin, contract.Build(parts[1], m => new InputException($"{origin}: [{table.Name}] {m}"), requireSchema: false)) { Compression = compression };
            Check(setting, origin);
            list.Add(setting);
        }
        return list;
    }

    /// <summary>The sinks DISPATCH carries: every topic the parser declares or the config names, the config winning field by field.</summary>
    public static List<SinkConfig> Effective(IReadOnlyList<TopicSetting> declared, IReadOnlyList<TopicSetting> overrides)
    {
        var names = declared.Select(t => t.Topic).Concat(overrides.Select(t => t.Topic)).Distinct().ToList();
        var sinks = new List<SinkConfig>(names.Count);
        foreach (string name in names)
        {
            var mine = declared.FirstOrDefault(t => t.Topic == name);
            var theirs = overrides.LastOrDefault(t => t.Topic == name);
            sinks.Add(new SinkConfig
            {
                Topic = name,
                Uri = theirs?.Sink ?? mine?.Sink ?? "parquet://" + name,
                Mode = theirs?.Mode ?? mine?.Mode ?? SinkMode.Append,
                SchemaDef = SchemaContract.Merge(mine?.Contract, theirs?.Contract)?.ToJson(),
                Compression = theirs?.Compression ?? mine?.Compression,
            });
        }
        return sinks;
    }

    /// <summary>A parser's declared topics as a routing rule's prefix renames them: prefix + name, the contract and mode kept, the sink uri dropped (the default, parquet://FINAL, unless the config names one).</summary>
    public static List<TopicSetting> Prefixed(IReadOnlyList<TopicSetting> declared, string prefix) =>
        [.. declared.Select(t => t with { Topic = prefix + t.Topic, Sink = null })];

    /// <summary>Where each effective field came from, for <c>parser show</c>.</summary>
    public static string OriginOf(string topic, IReadOnlyList<TopicSetting> declared, IReadOnlyList<TopicSetting> overrides) =>
        overrides.LastOrDefault(t => t.Topic == topic) is { } o ? $"config {o.Origin}"
        : declared.Any(t => t.Topic == topic) ? "parser" : "default";

    /// <summary>The codec's canonical name, or null when it is none Parquet output knows.</summary>
    private static string? Codec(string text) => ParquetCodecs.TryParse(text, out var codec) ? ParquetCodecs.Name(codec) : null;

    private static SinkMode? Mode(string text) => text switch
    {
        "append" => SinkMode.Append,
        "replace" => SinkMode.Replace,
        "error" => SinkMode.Error,
        _ => null,
    };

    /// <summary>The uri's form, checked as a worker would but against a placeholder root: scheme, '..', empty, append to a file.</summary>
    private static void Check(TopicSetting t, string origin)
    {
        if (t.Sink is null) return;
        var probe = Commands.OutputOptions(Config.Defaults("/casparian-check")) with { Root = "/casparian-check", AllowedRoots = ["/"] };
        try
        {
            if (SqliteTarget.Is(t.Sink)) SqliteTarget.Resolve(probe, 0, t.Topic, t.Sink, t.Mode ?? SinkMode.Append);
            else SinkTarget.Resolve(probe, 0, t.Topic, t.Sink, t.Mode ?? SinkMode.Append);
        }
        catch (OutputException e)
        {
            throw new InputException($"{origin}: {e.Message.Replace("job 0: ", "", StringComparison.Ordinal)}");
        }
    }

    /// <summary>Topic settings as stored with the parser (JSON), and back.</summary>
    public static string ToJson(IReadOnlyList<TopicSetting> topics) =>
        System.Text.Json.JsonSerializer.Serialize(topics.Select(t => new SinkConfig { Topic = t.Topic, Uri = t.Sink ?? "", Mode = t.Mode ?? SinkMode.Append, SchemaDef = t.Contract?.ToJson(), Compression = t.Compression }).ToList(), StoreJson.Default.ListSinkConfig);

    public static List<TopicSetting> FromJson(string? json, string origin) =>
        json is null ? [] : [.. (System.Text.Json.JsonSerializer.Deserialize(json, StoreJson.Default.ListSinkConfig) ?? [])
            .Select(s => new TopicSetting(s.Topic, s.Uri.Length == 0 ? null : s.Uri, s.Mode, origin, s.SchemaDef is { } d ? SchemaContract.FromJson(d) : null) { Compression = s.Compression })];

    /// <summary>Reads a dict literal of string keys and string values: strings, braces, colons, commas, comments.</summary>
    private sealed class LiteralReader(string text, string origin, int firstLine)
    {
        private int _at;

        public InputException Error(string what) =>
            new($"{origin}:{firstLine + text[..Math.Min(_at, text.TrimEnd().Length)].Count(c => c == '\n')}: TOPICS: {what}; TOPICS must be a literal dict of string literals (numbers for max_quarantine, a dict of strings for schema), e.g. TOPICS = {{\"sales\": {{\"sink\": \"parquet://sales\", \"mode\": \"append\"}}}}");

        private void Skip()
        {
            while (_at < text.Length)
            {
                char c = text[_at];
                if (c == '#') { while (_at < text.Length && text[_at] != '\n') _at++; }
                else if (char.IsWhiteSpace(c) || c == '\\') _at++;
                else break;
            }
        }

        public bool TryTake(char c)
        {
            Skip();
            if (_at < text.Length && text[_at] == c) { _at++; return true; }
            return false;
        }

        public void Expect(char c)
        {
            if (!TryTake(c)) throw Error(_at < text.Length ? $"expected '{c}', found '{text[_at]}'" : $"expected '{c}', found the end of the file");
        }

        /// <summary>A number literal (digits, sign, '.', exponent).</summary>
        public double Number()
        {
            Skip();
            int start = _at;
            while (_at < text.Length && (char.IsAsciiDigit(text[_at]) || text[_at] is '.' or '-' or '+' or 'e' or 'E' or '_')) _at++;
            string literal = text[start.._at].Replace("_", "", StringComparison.Ordinal);
            if (!double.TryParse(literal, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double value))
            {
                _at = start;
                throw Error(_at < text.Length ? $"expected a number, found '{text[_at]}'" : "expected a number");
            }
            return value;
        }

        public string String()
        {
            Skip();
            if (_at >= text.Length || text[_at] is not ('"' or '\'')) throw Error(_at < text.Length ? $"expected a string literal, found '{text[_at]}'" : "expected a string literal");
            char quote = text[_at++];
            var sb = new StringBuilder();
            while (_at < text.Length && text[_at] != quote)
            {
                if (text[_at] is '\\' or '\n') throw Error("escapes and line breaks are not allowed in TOPICS strings");
                sb.Append(text[_at++]);
            }
            if (_at >= text.Length) throw Error("a string is not closed");
            _at++;
            return sb.ToString();
        }
    }
}
