// The schema-contract keys of a topic declaration (issue 14), in TOPICS and in [topics.NAME]:
//
//   TOPICS = {"sales": {"schema": {"id": "int64", "amount": "float64?"}, "contract": "discard_row", "max_quarantine": 0.5}}
//
//   [topics.sales]
//   contract = "freeze"
//   max_quarantine = 0.1
//   schema = { id = "int64", amount = "float64?" }
//
// Unknown types, modes or keys are refused here, at `parser register` or when the config is read, with
// one line naming them. A parser that sets a contract other than evolve must declare a schema; the
// config file may set only the contract over a parser's schema.
using System.Globalization;

namespace Casparian;

internal static partial class Topics
{
    private sealed class ContractDeclaration
    {
        public static readonly string[] Keys = ["schema", "contract", "max_quarantine"];
        public const string KeyList = "\"sink\", \"mode\", \"compression\", \"schema\", \"contract\" and \"max_quarantine\"";

        private List<DeclaredColumn>? _columns;
        private ContractMode? _mode;
        private double? _max;

        /// <summary>One key's value from a TOPICS literal.</summary>
        public void Read(string topic, string key, LiteralReader reader)
        {
            switch (key)
            {
                case "schema":
                    _columns = [];
                    reader.Expect('{');
                    while (!reader.TryTake('}'))
                    {
                        string name = reader.String();
                        reader.Expect(':');
                        string type = reader.String();
                        _columns.Add(SchemaContract.Column(name, type, m => reader.Error($"topic '{topic}': {m}")));
                        if (!reader.TryTake(',')) { reader.Expect('}'); break; }
                    }
                    break;
                case "contract":
                    string mode = reader.String();
                    _mode = SchemaContract.ParseMode(mode) ?? throw reader.Error($"topic '{topic}': contract '{mode}' is not one of {string.Join(", ", SchemaContract.ModeNames)}");
                    break;
                default:
                    _max = reader.Number();
                    break;
            }
        }

        /// <summary>One entry of a [topics.NAME] table.</summary>
        public void Read(string table, ConfigEntry e, string where)
        {
            InputException Error(string what) => new($"{where}: [{table}] {what}");
            switch (e.Key)
            {
                case "schema":
                    if (e.Value.Table is not { } entries) throw Error("schema must be an inline table of column = \"type\", e.g. schema = { id = \"int64\", note = \"string?\" }");
                    _columns = [];
                    foreach (var c in entries)
                    {
                        if (c.Value.Text is not { } type || c.Value.Items is not null || c.Value.Table is not null) throw Error($"schema column '{c.Key}' must be a type name string");
                        _columns.Add(SchemaContract.Column(c.Key, type, Error));
                    }
                    break;
                case "contract":
                    string mode = e.Value.Text ?? "";
                    _mode = SchemaContract.ParseMode(mode) ?? throw Error($"contract '{mode}' is not one of {string.Join(", ", SchemaContract.ModeNames)}");
                    break;
                default:
                    if (e.Value.Items is not null || e.Value.Table is not null
                        || !double.TryParse(e.Value.Text, NumberStyles.Float, CultureInfo.InvariantCulture, out double max))
                        throw Error("max_quarantine must be a number from 0 to 1 (a fraction of a job's rows)");
                    _max = max;
                    break;
            }
        }

        /// <summary>The declaration (null when no contract key was set), checked.</summary>
        public SchemaContract? Build(string topic, Func<string, Exception> error, bool requireSchema)
        {
            var contract = new SchemaContract(_columns, _mode, _max);
            if (contract.IsEmpty) return null;
            contract.Check(topic, error);
            if (requireSchema && _columns is null && contract.Effective != ContractMode.Evolve)
                throw error($"topic '{topic}': contract '{SchemaContract.ModeName(contract.Effective)}' needs a \"schema\" to enforce");
            return contract;
        }
    }
}
