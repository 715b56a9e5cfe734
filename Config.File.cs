// The config file layer: casparian.toml, parsed by Tomlyn (TOML 1.1) into its syntax tree, which
// keeps every key's line. On top of Tomlyn's own syntax errors this layer checks what TOML cannot:
//   - a top-level key must be a known setting (a typo is an error with "did you mean", never a
//     silent default), set once, with a scalar or an array of scalars as its value;
//   - a table ([NAME], [NAME.SUB], [[NAME]]) must be one a later layer registered in Config.Tables
//     (e.g. [topics.NAME], [[sources]], [[rules]]); its key/value pairs are handed to that owner as
//     ConfigTables, in file order. Any other table is an error naming it.
// Every error names the file and the line. Tomlyn's syntax tree (SyntaxParser), not its model
// (TomlTable, as UvLock.cs reads uv.lock): only the tree keeps each key's line, and a settings file
// the user edits by hand must point at the line to fix.
using System.Globalization;
using Tomlyn.Parsing;
using Tomlyn.Syntax;

namespace Casparian;

/// <summary>A raw value: text (flag, environment, config-file scalar), a config-file array, or an inline table.</summary>
internal readonly record struct ConfigValue(string? Text, IReadOnlyList<string>? Items = null, IReadOnlyList<ConfigEntry>? Table = null)
{
    public override string ToString() =>
        Table is not null ? "{" + string.Join(", ", Table.Select(e => $"{e.Key} = {e.Value}")) + "}"
        : Items is null ? Text ?? "" : "[" + string.Join(", ", Items) + "]";
}

/// <summary>One <c>key = value</c> of a table; <see cref="Key"/> joins a dotted key with '.'.</summary>
internal readonly record struct ConfigEntry(string Key, ConfigValue Value, int Line);

/// <summary>
/// A registered table as written: <see cref="Name"/> is its full header ("topics.sales"),
/// <see cref="ArrayItem"/> true for one <c>[[NAME]]</c> entry of an array of tables.
/// </summary>
internal sealed record ConfigTable(string File, string Name, int Line, bool ArrayItem, IReadOnlyList<ConfigEntry> Entries)
{
    /// <summary>The registered name the header starts with: "topics" for [topics.sales].</summary>
    public string Root => Name.Split('.')[0];
}

internal sealed class ConfigFile
{
    public required string Path { get; init; }
    public required Dictionary<string, (ConfigValue Value, int Line)> Values { get; init; }
    /// <summary>The registered tables, in file order.</summary>
    public required IReadOnlyList<ConfigTable> Tables { get; init; }

    /// <summary>Reads <paramref name="path"/>; <paramref name="tables"/> are the table names an owner has registered.</summary>
    public static ConfigFile Read(string path, IReadOnlyCollection<string> tables)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw ConfigThrow.File_Unreadable(path, e);
        }
        // Syntax first (without Tomlyn's semantic checks), so our clearer messages for keys set twice
        // come before its own; its semantic checks (a table defined twice …) run last.
        var syntax = SyntaxParser.Parse(text, path, validate: false);
        if (FirstError(syntax) is { } error) throw SyntaxError(path, text, error);

        var values = new Dictionary<string, (ConfigValue, int)>(StringComparer.Ordinal);
        foreach (var kv in syntax.KeyValues)
        {
            string key = KeyText(kv.Key!);
            int line = LineOf(kv);
            if (Array.Find(Config.All, s => s.Key == key) is null) throw ConfigThrow.File_UnknownKey(path, line, key);
            if (values.ContainsKey(key)) throw ConfigThrow.File_SetTwice(path, line, key);
            values[key] = (ValueOf(path, line, key, kv.Value!), line);
        }
        var found = new List<ConfigTable>();
        foreach (var table in syntax.Tables)
        {
            string name = KeyText(table.Name!);
            int line = LineOf(table);
            if (!tables.Contains(name.Split('.')[0])) throw ConfigThrow.File_UnknownTable(path, line, name, table is TableArraySyntax, tables);
            var entries = new List<ConfigEntry>();
            foreach (var kv in table.Items)
            {
                string key = KeyText(kv.Key!);
                entries.Add(new ConfigEntry(key, ValueOf(path, LineOf(kv), key, kv.Value!), LineOf(kv)));
            }
            found.Add(new ConfigTable(path, name, line, table is TableArraySyntax, entries));
        }

        if (FirstError(SyntaxParser.Parse(text, path, validate: true)) is { } semantic) throw SyntaxError(path, text, semantic);
        return new ConfigFile { Path = path, Values = values, Tables = found };
    }

    private static DiagnosticMessage? FirstError(DocumentSyntax document)
    {
        foreach (var d in document.Diagnostics)
            if (d.Kind == DiagnosticMessageKind.Error) return d;
        return null;
    }

    private static int LineOf(SyntaxNode node) => node.Span.Start.Line + 1;

    private static string KeyText(KeySyntax key)
    {
        string text = Part(key.Key);
        foreach (var dotted in key.DotKeys) text += "." + Part(dotted.Key);
        return text;
    }

    private static string Part(BareKeyOrStringValueSyntax? part) => part switch
    {
        BareKeySyntax bare => bare.Key?.Text ?? "",
        StringValueSyntax quoted => quoted.Value ?? "",
        _ => "",
    };

    /// <summary>
    /// Tomlyn's message, except for the commonest mistake in a settings file, a bare word where a string
    /// needs quotes (<c>bind = tcp://host:1</c>), which gets a message saying so.
    /// </summary>
    private static CasparianException SyntaxError(string path, string text, DiagnosticMessage error)
    {
        int line = error.Span.Start.Line + 1;
        string source = text.Split('\n') is var lines && line - 1 < lines.Length ? lines[line - 1].Trim() : "";
        int eq = source.IndexOf('=');
        if (eq > 0)
        {
            string key = source[..eq].Trim().Trim('"');
            string value = source[(eq + 1)..].Split('#')[0].Trim();
            if (value.Length > 0 && (char.IsAsciiLetter(value[0]) || value[0] == '/') && value is not ("true" or "false" or "inf" or "nan"))
                return ConfigThrow.File_Unquoted(path, line, key, value);
            return ConfigThrow.File_BadValue(path, line, key, error.Message);
        }
        return ConfigThrow.File_Syntax(path, line, error.Message);
    }

    /// <summary>A value as text: scalars as written (numbers in their plain form), arrays of scalars as items, inline tables as entries.</summary>
    private static ConfigValue ValueOf(string path, int line, string key, ValueSyntax value)
    {
        switch (value)
        {
            case ArraySyntax array:
                var items = new List<string>();
                foreach (var item in array.Items)
                {
                    if (item.Value is ArraySyntax or InlineTableSyntax) throw ConfigThrow.File_BadValue(path, line, key, "an array may hold strings, numbers and booleans only");
                    items.Add(Scalar(path, line, key, item.Value!));
                }
                return new ConfigValue(null, items);
            case InlineTableSyntax table:
                var entries = new List<ConfigEntry>();
                foreach (var item in table.Items)
                {
                    string k = KeyText(item.KeyValue!.Key!);
                    entries.Add(new ConfigEntry(k, ValueOf(path, line, k, item.KeyValue.Value!), line));
                }
                return new ConfigValue(null, null, entries);
            default:
                return new ConfigValue(Scalar(path, line, key, value));
        }
    }

    private static string Scalar(string path, int line, string key, ValueSyntax value) => value switch
    {
        StringValueSyntax s => s.Value ?? "",
        IntegerValueSyntax i => i.Value.ToString(CultureInfo.InvariantCulture),
        FloatValueSyntax f => f.Value.ToString("R", CultureInfo.InvariantCulture),
        BooleanValueSyntax b => b.Value ? "true" : "false",
        _ => throw ConfigThrow.File_BadValue(path, line, key, "dates and times are not setting values; write a string"),
    };

    /// <summary>The known key closest to <paramref name="key"/>, when it is within two edits.</summary>
    internal static string? Suggest(string key)
    {
        var best = Config.All.Select(s => (s.Key, Distance: Levenshtein(key, s.Key))).MinBy(p => p.Distance);
        return best.Distance <= 2 ? best.Key : null;
    }

    private static int Levenshtein(string a, string b)
    {
        var prev = new int[b.Length + 1];
        var cur = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) prev[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            cur[0] = i;
            for (int j = 1; j <= b.Length; j++)
                cur[j] = Math.Min(Math.Min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            (prev, cur) = (cur, prev);
        }
        return prev[b.Length];
    }
}
