using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace MoErging.Bench;

/// <summary>
/// GB/s over the minimum bytes (BRIEF §6): for a forward, X read once, Y read and written once, the
/// router's prototypes and every selected expert read once; for the copy, bytes read plus written.
/// Mean time, so it pairs with the Mean column. Each benchmark program says how many bytes a case must move.
/// </summary>
/// <param name="bytesOf">The minimum bytes of a case, or null for cases that are not about moving bytes (merges).</param>
public sealed class GigabytesPerSecondColumn(Func<BenchmarkCase, long?> bytesOf) : IColumn
{
    public string Id => nameof(GigabytesPerSecondColumn);

    public string ColumnName => "GB/s (min bytes)";

    public bool AlwaysShow => true;

    public ColumnCategory Category => ColumnCategory.Custom;

    public int PriorityInCategory => 0;

    public bool IsNumeric => true;

    public UnitType UnitType => UnitType.Dimensionless;

    public string Legend => "Minimum bytes the call must move divided by its mean time (1 GB = 1e9 bytes)";

    public string GetValue(Summary summary, BenchmarkCase benchmark)
    {
        double? meanNs = summary[benchmark]?.ResultStatistics?.Mean;
        return meanNs is double ns && bytesOf(benchmark) is long bytes ? (bytes / ns).ToString("F2", CultureInfo.InvariantCulture) : "NA";
    }

    public string GetValue(Summary summary, BenchmarkCase benchmark, SummaryStyle style) => GetValue(summary, benchmark);

    public bool IsAvailable(Summary summary) => true;

    public bool IsDefault(Summary summary, BenchmarkCase benchmark) => false;
}
