// uv.lock, uv's lockfile (TOML, lock format version 1), read with Tomlyn's model API: what an
// environment built from it must hold, for the two ways EnvManager builds one (Venv.UvLock.cs).
//
// What the file holds (the parts read here):
//   version = 1                                   the lock format; any other is refused
//   requires-python = ">=3.9"
//   [[package]]                                   one per locked distribution; the same name may appear
//   name, version                                 more than once with different versions ("forks")
//   source = { registry = URL } | { virtual = "." } | { editable = "." } | { git = … } | { url = … }
//            | { path = … } | { directory = … }
//   dependencies = [{ name, version?, source?, marker?, extra? = [..] }]
//   [package.optional-dependencies] EXTRA = [same shape]
//   [package.dev-dependencies] GROUP = [...]      never installed (uv sync --no-dev)
//   wheels = [{ url | path | filename, hash = "sha256:…", size }]
//   sdist = { … }                                 never installed: builds need an index and a compiler
//
// The lock is universal: it holds every platform's and every Python's packages, and edges carry PEP 508
// markers. The pins are what `uv sync --frozen --no-dev --no-install-project` would install: the
// packages reachable from the project's own entry (source virtual or editable ".") through its
// dependencies and the extras those request, each with the marker under which it is reached (an OR
// over the paths to it of the AND of the markers along each). pip evaluates those markers itself, as
// it does for lines of `uv export`; markers on extras or dependency groups (uv's conflict markers)
// cannot be evaluated by pip and are refused.
//
// Tomlyn's model (a TomlTable through the source-generated UvLockToml context, which NativeAOT needs
// in place of reflection), not the syntax tree Config.File.cs walks for casparian.toml: uv writes
// this file, so past a TOML syntax error (which Tomlyn places) an error names the package and field,
// not a line, and the typed tables and arrays of tables are what the graph walk below reads.
using System.Text;
using System.Text.RegularExpressions;
using Tomlyn;
using Tomlyn.Model;
using Tomlyn.Serialization;

namespace Casparian;

/// <summary>One wheel of a locked package: its file name and lowercase hex sha256.</summary>
internal readonly record struct UvWheel(string FileName, string Sha256);

/// <summary>A [[package]] entry. <see cref="SourceKind"/> is the source table's key (registry, virtual, git, …).</summary>
internal sealed record UvPackage(
    string Name,
    string? Version,
    string SourceKind,
    string SourceValue,
    IReadOnlyList<UvDependency> Dependencies,
    IReadOnlyDictionary<string, IReadOnlyList<UvDependency>> OptionalDependencies,
    IReadOnlyList<UvWheel> Wheels,
    bool HasSdist)
{
    public string Display => Version is null ? Name : $"{Name}=={Version}";
    public bool IsLocal => SourceKind is "virtual" or "editable" or "path" or "directory";
}

/// <summary>An edge: the package it names (by name, and by version/source where the name is ambiguous), its marker and the extras it asks for.</summary>
internal sealed record UvDependency(string Name, string? Version, string? Source, string? Marker, IReadOnlyList<string> Extras);

/// <summary>A package the environment needs, and the PEP 508 marker under which it does (null: always).</summary>
internal readonly record struct UvPin(UvPackage Package, string? Marker);

[TomlSerializable(typeof(TomlTable))]
internal sealed partial class UvLockToml : TomlSerializerContext;

internal sealed partial class UvLock
{
    public const string FileName = "uv.lock";
    public const long SupportedVersion = 1;

    // Alternatives one package's marker may combine before the lock is called too tangled for pip.
    private const int MaxMarkerTerms = 64;

    public required string? RequiresPython { get; init; }
    /// <summary>The project's own entry (source virtual or editable "."): never installed, its dependencies are.</summary>
    public required UvPackage Project { get; init; }
    public required IReadOnlyList<UvPackage> Packages { get; init; }

    /// <summary>
    /// True when <paramref name="lockfile"/> is a uv.lock rather than requirements text: uv writes
    /// `version = N` as its first line, a line no requirements file can hold. Decided on the text, so a
    /// damaged uv.lock is still recognised, refused with its TOML error, and never handed to pip.
    /// </summary>
    public static bool Recognise(string lockfile)
    {
        foreach (string raw in lockfile.TrimStart('\uFEFF').Split('\n'))
        {
            string line = raw.Trim();
            if (line.Length == 0 || line.StartsWith('#')) continue;
            return VersionLine().IsMatch(line);
        }
        return false;
    }

    /// <summary>Reads a uv.lock; throws <see cref="InputException"/> with one line naming what is wrong and where.</summary>
    public static UvLock Parse(string text)
    {
        TomlTable root;
        try
        {
            root = TomlSerializer.Deserialize(text, UvLockToml.Default.TomlTable) ?? new TomlTable();
        }
        catch (TomlException e)
        {
            // Tomlyn wraps the parser's error in a conversion error; the innermost one has the position.
            var inner = e;
            while (inner.InnerException is TomlException next) inner = next;
            throw UvLockThrow.Input_Toml(inner.Line, inner.Column, ErrorPrefix().Replace(inner.Message, "").TrimEnd('.'));
        }

        if (!root.TryGetValue("version", out var v) || v is not long version) throw UvLockThrow.Input_Field("the top level", "version", "an integer");
        if (version != SupportedVersion) throw UvLockThrow.Input_Version(version);
        string? requiresPython = OptionalString(root, "requires-python", "the top level");

        if (!root.TryGetValue("package", out var p) || p is not TomlTableArray entries) throw UvLockThrow.Input_NoProject();
        var packages = new List<UvPackage>(entries.Count);
        int index = 0;
        foreach (TomlTable entry in entries) packages.Add(ReadPackage(entry, ++index));

        var projects = packages.Where(x => x.SourceKind is "virtual" or "editable" && x.SourceValue == ".").ToList();
        if (projects.Count != 1) throw UvLockThrow.Input_NoProject();
        return new UvLock { RequiresPython = requiresPython, Project = projects[0], Packages = packages };
    }

    /// <summary>
    /// What `uv sync --frozen --no-dev --no-install-project` installs, in name order: every package
    /// reachable from the project's dependencies, with its marker. Throws <see cref="InputException"/>
    /// for an edge that names no entry (or several) and for markers too tangled to write down.
    /// </summary>
    public IReadOnlyList<UvPin> Pins()
    {
        // Each (package, extra) node carries its marker as OR-of-ANDs: a list of terms, each a sorted set
        // of marker atoms; an empty term is "always". Markers only ever grow, so a worklist settles.
        var markers = new Dictionary<(UvPackage, string?), List<string[]>>();
        var work = new Queue<(UvPackage, string?)>();
        markers[(Project, null)] = [[]];
        work.Enqueue((Project, null));
        while (work.Count > 0)
        {
            var (package, extra) = work.Dequeue();
            var reached = markers[(package, extra)];
            IReadOnlyList<UvDependency> edges = extra is null ? package.Dependencies
                : package.OptionalDependencies.TryGetValue(extra, out var optional) ? optional : [];
            foreach (var edge in edges)
            {
                UvPackage target = Resolve(package, edge);
                List<string[]> terms = edge.Marker is null ? [.. reached] : [.. reached.Select(t => With(t, edge.Marker))];
                foreach (string? targetExtra in edge.Extras.Prepend(null))
                {
                    var key = (target, targetExtra);
                    if (!markers.TryGetValue(key, out var existing)) markers[key] = existing = [];
                    if (Merge(existing, terms, target)) work.Enqueue(key);
                }
            }
        }
        return [.. markers
            .Where(m => m.Key.Item2 is null && m.Key.Item1 != Project)
            .Select(m => new UvPin(m.Key.Item1, MarkerText(m.Value)))
            .OrderBy(pin => pin.Package.Name, StringComparer.Ordinal)
            .ThenBy(pin => pin.Package.Version, StringComparer.Ordinal)];
    }

    /// <summary>
    /// The pyproject.toml uv sync is given. The environment is built from the lockfile alone, so that
    /// env_hash (sha256 of the lockfile, SPEC §5) names everything it was built from and PREPARE_ENV,
    /// which carries no bundle, builds the same environment as a DISPATCH. That loses nothing:
    /// with --frozen, uv takes the packages and their edges from the lock, starting at the project's
    /// entry by name; the pyproject.toml only has to name that entry. The parser's real pyproject.toml
    /// still rides in its bundle, but its [tool.uv] settings (indexes, default groups, sources) do not
    /// shape the environment: a frozen sync installs from the URLs the lock records, with no dev groups.
    /// </summary>
    public string PyProject()
    {
        var text = new StringBuilder("# written by casparian for `uv sync --frozen` from the uv.lock beside it\n[project]\n");
        text.Append("name = ").Append(TomlString(Project.Name)).Append('\n');
        if (Project.Version is { } version) text.Append("version = ").Append(TomlString(version)).Append('\n');
        if (RequiresPython is { } python) text.Append("requires-python = ").Append(TomlString(python)).Append('\n');
        return text.ToString();
    }

    /// <summary>
    /// Requirements text for pip --require-hashes --no-deps: one line per pin, `name==version ; marker
    /// --hash=sha256:…` with the hash of every wheel the lock lists for it (pip picks the wheel that fits
    /// this machine and checks it is one of them). The pins must have passed <see cref="CheckForPip"/>.
    /// </summary>
    public static string Requirements(IReadOnlyList<UvPin> pins)
    {
        var text = new StringBuilder("# written by casparian from uv.lock: pip install --require-hashes --no-deps --only-binary :all:\n");
        foreach (var (package, marker) in pins)
        {
            text.Append(package.Name).Append("==").Append(package.Version);
            if (marker is not null) text.Append(" ; ").Append(marker);
            foreach (var wheel in package.Wheels) text.Append(" --hash=sha256:").Append(wheel.Sha256);
            text.Append('\n');
        }
        return text.ToString();
    }

    /// <summary>Refuses, with one line, a pin pip cannot install offline from wheels with hashes.</summary>
    public static void CheckForPip(IReadOnlyList<UvPin> pins)
    {
        foreach (var (package, marker) in pins)
        {
            if (package.SourceKind != "registry") throw UvLockThrow.Input_NotFromRegistry(package);
            if (package.Version is null) throw UvLockThrow.Input_NoVersion(package);
            if (package.Wheels.Count == 0) throw UvLockThrow.Input_SdistOnly(package, package.HasSdist);
            if (marker is not null && UnevaluableMarker().IsMatch(QuotedText().Replace(marker, "''"))) throw UvLockThrow.Input_Marker(package, marker);
        }
    }

    /// <summary>Refuses, with one line, a pin that lives beside the project (a path, a workspace member): the environment is built away from it.</summary>
    public static void CheckForUv(IReadOnlyList<UvPin> pins)
    {
        foreach (var (package, _) in pins)
            if (package.IsLocal) throw UvLockThrow.Input_Local(package);
    }

    private static UvPackage ReadPackage(TomlTable entry, int index)
    {
        string where = $"[[package]] #{index}";
        string name = RequiredString(entry, "name", where);
        where = $"package {name}";
        string? version = OptionalString(entry, "version", where);
        if (!entry.TryGetValue("source", out var s) || s is not TomlTable source || source.Count == 0) throw UvLockThrow.Input_Field(where, "source", "a table such as { registry = \"…\" }");
        var (kind, value) = SourceOf(source, where);

        var optional = new Dictionary<string, IReadOnlyList<UvDependency>>(StringComparer.Ordinal);
        if (entry.TryGetValue("optional-dependencies", out var o))
        {
            if (o is not TomlTable extras) throw UvLockThrow.Input_Field(where, "optional-dependencies", "a table of extras");
            foreach (var (extra, list) in extras) optional[extra] = Dependencies(list, $"{where}, extra {extra}");
        }

        var wheels = new List<UvWheel>();
        if (entry.TryGetValue("wheels", out var w))
        {
            if (w is not TomlArray array) throw UvLockThrow.Input_Field(where, "wheels", "an array of tables");
            foreach (var item in array)
            {
                if (item is not TomlTable wheel) throw UvLockThrow.Input_Field(where, "wheels", "an array of tables");
                wheels.Add(ReadWheel(wheel, where));
            }
        }

        return new UvPackage(name, version, kind, value,
            entry.TryGetValue("dependencies", out var d) ? Dependencies(d, where) : [],
            optional, wheels, entry.ContainsKey("sdist"));
    }

    private static (string Kind, string Value) SourceOf(TomlTable source, string where)
    {
        foreach (var (key, raw) in source)
            if (key is "registry" or "virtual" or "editable" or "path" or "directory" or "git" or "url")
                return (key, raw as string ?? "");
        throw UvLockThrow.Input_Field(where, "source", "a table with one of registry, virtual, editable, path, directory, git, url");
    }

    private static UvWheel ReadWheel(TomlTable wheel, string where)
    {
        // A registry wheel has a url; a wheel from a flat directory or a local file a path or a filename.
        string? location = OptionalString(wheel, "filename", where) ?? OptionalString(wheel, "url", where) ?? OptionalString(wheel, "path", where);
        if (location is null) throw UvLockThrow.Input_Field(where, "wheels", "entries with a url, path or filename");
        string fileName = Uri.UnescapeDataString(location[(location.LastIndexOf('/') + 1)..]);
        // The name is looked up in the wheelhouse: a plain file name, nothing that walks elsewhere.
        if (!fileName.EndsWith(".whl", StringComparison.Ordinal) || fileName.Contains('\\') || fileName.StartsWith('.'))
            throw UvLockThrow.Input_WheelName(where, location);
        string hash = OptionalString(wheel, "hash", where) ?? "";
        if (!Sha256Hash().IsMatch(hash)) throw UvLockThrow.Input_WheelHash(where, fileName, hash);
        return new UvWheel(fileName, hash["sha256:".Length..].ToLowerInvariant());
    }

    private static List<UvDependency> Dependencies(object? raw, string where)
    {
        if (raw is not TomlArray array) throw UvLockThrow.Input_Field(where, "dependencies", "an array of tables");
        var list = new List<UvDependency>(array.Count);
        foreach (var item in array)
        {
            if (item is not TomlTable dep) throw UvLockThrow.Input_Field(where, "dependencies", "an array of tables");
            string? source = null;
            if (dep.TryGetValue("source", out var s) && s is TomlTable table) source = SourceText(SourceOf(table, where));
            var extras = new List<string>();
            if (dep.TryGetValue("extra", out var e))
            {
                if (e is not TomlArray names || names.Any(n => n is not string)) throw UvLockThrow.Input_Field(where, "extra", "an array of strings");
                extras.AddRange(names.Cast<string>());
            }
            list.Add(new UvDependency(RequiredString(dep, "name", where), OptionalString(dep, "version", where), source, OptionalString(dep, "marker", where), extras));
        }
        return list;
    }

    /// <summary>The one entry an edge names: by name, narrowed by version and source where the lock gives them.</summary>
    private UvPackage Resolve(UvPackage from, UvDependency edge)
    {
        var found = Packages.Where(x => x.Name == edge.Name
            && (edge.Version is null || x.Version == edge.Version)
            && (edge.Source is null || SourceText((x.SourceKind, x.SourceValue)) == edge.Source)).ToList();
        if (found.Count != 1) throw UvLockThrow.Input_Edge(from, edge, found.Count);
        return found[0];
    }

    private static string SourceText((string Kind, string Value) source) => source.Kind + "=" + source.Value;

    private static string[] With(string[] term, string atom) =>
        term.Contains(atom, StringComparer.Ordinal) ? term : [.. term.Append(atom).Order(StringComparer.Ordinal)];

    /// <summary>Adds <paramref name="terms"/> to <paramref name="into"/>, dropping terms another one implies; true if it changed.</summary>
    private static bool Merge(List<string[]> into, List<string[]> terms, UvPackage target)
    {
        bool changed = false;
        foreach (var term in terms)
        {
            if (into.Exists(t => IsSubset(t, term))) continue;
            into.RemoveAll(t => IsSubset(term, t));
            into.Add(term);
            changed = true;
        }
        if (into.Count > MaxMarkerTerms) throw UvLockThrow.Input_MarkerTooComplex(target, MaxMarkerTerms);
        return changed;
    }

    private static bool IsSubset(string[] small, string[] large) => small.All(a => large.Contains(a, StringComparer.Ordinal));

    private static string? MarkerText(List<string[]> terms)
    {
        if (terms.Exists(t => t.Length == 0)) return null;
        // PEP 508: `and` binds tighter than `or`; each atom is a whole marker of the lock, so it is parenthesised.
        return string.Join(" or ", terms.Select(t => string.Join(" and ", t.Select(a => $"({a})"))));
    }

    private static string RequiredString(TomlTable table, string key, string where) =>
        OptionalString(table, key, where) ?? throw UvLockThrow.Input_Missing(where, key);

    private static string? OptionalString(TomlTable table, string key, string where)
    {
        if (!table.TryGetValue(key, out var value)) return null;
        if (value is not string s) throw UvLockThrow.Input_Field(where, key, "a string");
        return s;
    }

    private static string TomlString(string value) =>
        "\"" + value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal) + "\"";

    [GeneratedRegex(@"^version\s*=\s*\d+\s*(#.*)?$")]
    private static partial Regex VersionLine();

    [GeneratedRegex(@"^\(\d+,\d+\) : error : ")]
    private static partial Regex ErrorPrefix();

    [GeneratedRegex("^sha256:[0-9a-fA-F]{64}$")]
    private static partial Regex Sha256Hash();

    // uv's conflict markers (extra == 'extra-7-project-cpu', 'group-…') and PEP 751's extras /
    // dependency_groups variables: pip would read them as false and silently leave packages out.
    [GeneratedRegex(@"\b(extra|extras|dependency_groups)\b")]
    private static partial Regex UnevaluableMarker();

    [GeneratedRegex(@"'[^']*'|""[^""]*""")]
    private static partial Regex QuotedText();
}

internal static class UvLockThrow
{
    private const string Relock = "regenerate it with `uv lock`";
    private const string UseUv = "build it with uv instead (uv on the worker's PATH and no wheelhouse set)";

    public static InputException Input_NoVersionLine() =>
        new($"uv.lock does not start with its `version = N` line; {Relock}");
    public static InputException Input_Toml(int? line, int? column, string message) =>
        new($"uv.lock is not valid TOML (line {line}, column {column}: {message}); {Relock}");
    public static InputException Input_Version(long version) =>
        new($"uv.lock has lock format version {version}; Casparian reads version {UvLock.SupportedVersion}: lock it with a uv that writes version {UvLock.SupportedVersion}");
    public static InputException Input_Field(string where, string key, string expected) =>
        new($"uv.lock: {key} of {where} must be {expected}; {Relock}");
    public static InputException Input_Missing(string where, string key) =>
        new($"uv.lock: {where} has no {key}; {Relock}");
    public static InputException Input_NoProject() =>
        new("uv.lock has no single project entry (a [[package]] with source = { virtual = \".\" } or { editable = \".\" }); Casparian builds environments for one project's lock, not a workspace's or a script's");
    public static InputException Input_Edge(UvPackage from, UvDependency edge, int found) =>
        new($"uv.lock: {from.Display} depends on {edge.Name}{(edge.Version is null ? "" : "==" + edge.Version)}, which matches {found} [[package]] entries instead of one; {Relock}");
    public static InputException Input_WheelName(string where, string location) =>
        new($"uv.lock: {where} lists the wheel '{location}', which is not a wheel file name; {Relock}");
    public static InputException Input_WheelHash(string where, string fileName, string hash) =>
        new($"uv.lock: wheel {fileName} of {where} has hash '{hash}'; a sha256:<64 hex> hash is needed to install it with --require-hashes");
    public static InputException Input_MarkerTooComplex(UvPackage package, int limit) =>
        new($"uv.lock: the markers on the ways to {package.Display} combine into more than {limit} alternatives, too many to hand to pip; {UseUv}");
    public static InputException Input_NotFromRegistry(UvPackage package) =>
        new($"uv.lock pins {package.Display} from a {package.SourceKind} source ({package.SourceValue}); installs from the wheelhouse take registry wheels only: put its wheel in the wheelhouse and lock against that, or {UseUv}");
    public static InputException Input_NoVersion(UvPackage package) =>
        new($"uv.lock pins {package.Name} without a version; {Relock}");
    public static InputException Input_SdistOnly(UvPackage package, bool hasSdist) =>
        new(hasSdist
            ? $"uv.lock pins {package.Display}, which has only a source distribution; environments install wheels only: build a wheel for it into the wheelhouse and lock against that, or pick a version with wheels"
            : $"uv.lock pins {package.Display} with no wheels listed; {Relock}");
    public static InputException Input_Marker(UvPackage package, string marker) =>
        new($"uv.lock installs {package.Display} under the marker `{marker}`, which depends on extras or dependency groups that pip cannot evaluate; {UseUv}");
    public static InputException Input_Local(UvPackage package) =>
        new($"uv.lock pins {package.Display} from a {package.SourceKind} beside the project ({package.SourceValue}); an environment is built from the lock alone, away from the project: depend on a released package instead");
}
