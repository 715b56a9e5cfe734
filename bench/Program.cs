// Runs every *Bench suite through BenchmarkDotNet, then times the Python pairing of each benchmark
// that has one ([Python]) in the same run and prints the ratio.
//   dotnet run -c Release --project bench [-- --filter '*Protocol*']
using BenchmarkDotNet.Running;

namespace Casparian.Bench;

public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 0) args = ["--filter", "*"];
        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args).ToArray();
        return Parity.Report(summaries);
    }
}
