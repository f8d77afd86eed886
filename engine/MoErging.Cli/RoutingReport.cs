using System.Globalization;
using System.Text.Json;
using MoErging.Routing;
using ScottPlot;

namespace MoErging.Cli;

/// <summary>
/// The routing report <c>moerge route --report DIR</c> writes: <c>heatmap.png</c> (tokens down, experts
/// across, colour = |weight|), <c>load.png</c> (slots and top-1 tokens per expert) and
/// <c>statistics.json</c> (the same numbers, with expert names). The pictures are drawn with ScottPlot, the
/// experts named on their axis.
/// </summary>
internal static class RoutingReport
{
    private const int MaxRows = 400;     // tokens beyond this are averaged into rows
    private const int Height = 560;

    // The heatmap's colour scale runs from the colormap's first colour (0) to its last (the largest cell).
    private static readonly IColormap Scale = new ScottPlot.Colormaps.Viridis();

    /// <summary>The colour of the load bars and of the top-1 bars drawn inside them.</summary>
    public static readonly Color LoadColour = Color.FromHex("#3B528B"), TopOneColour = Color.FromHex("#FDA025");

    /// <summary>The heatmap's colour for the largest cell.</summary>
    public static Color Hottest => Scale.GetColor(1);

    /// <summary>Adds the three files in <paramref name="directory"/> (made if needed) to a command's outputs; returns their paths.</summary>
    public static string[] AddTo(OutputFiles outputs, string directory, RoutingDecision decision, IReadOnlyList<string> expertNames)
    {
        RoutingStatistics statistics = RoutingStatistics.Of(decision);
        string heatmap = Path.Combine(directory, "heatmap.png"), load = Path.Combine(directory, "load.png"), json = Path.Combine(directory, "statistics.json");
        byte[] text = System.Text.Encoding.UTF8.GetBytes(Json(statistics, expertNames) + "\n");
        byte[] heatmapPng = Png(Heatmap(decision, expertNames)), loadPng = Png(LoadChart(statistics, expertNames));
        outputs.Directory(directory)
            .Add(heatmap, stream => stream.Write(heatmapPng))
            .Add(load, stream => stream.Write(loadPng))
            .Add(json, stream => stream.Write(text));
        return [heatmap, load, json];
    }

    /// <summary>The statistics as indented JSON.</summary>
    public static string Json(RoutingStatistics statistics, IReadOnlyList<string> expertNames)
    {
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            statistics.WriteJson(writer, expertNames);
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>A plot as PNG bytes, at the width its experts need.</summary>
    public static byte[] Png((Plot Plot, int Width) picture)
    {
        using Plot plot = picture.Plot;
        return plot.GetImageBytes(picture.Width, Height, ImageFormat.Png);
    }

    /// <summary>Tokens × experts, colour = |weight| (rows average groups of tokens when T is large).</summary>
    public static (Plot Plot, int Width) Heatmap(RoutingDecision decision, IReadOnlyList<string> expertNames)
    {
        int tokens = decision.TokenCount, experts = decision.ExpertCount, rows = Math.Clamp(tokens, 1, MaxRows);
        var cells = new double[rows, experts];
        for (int r = 0; r < rows && tokens > 0; r++)
        {
            int t0 = (int)((long)r * tokens / rows), t1 = (int)((long)(r + 1) * tokens / rows);
            for (int t = t0; t < t1; t++)
            {
                for (int s = 0; s < decision.TopK; s++)
                {
                    int e = decision.ExpertIdsOf(t)[s];
                    if (e >= 0)
                    {
                        cells[r, e] += Math.Abs(decision.WeightsOf(t)[s]) / (t1 - t0);
                    }
                }
            }
        }
        var plot = new Plot();
        var heatmap = plot.Add.Heatmap(cells);
        heatmap.Colormap = Scale;
        // Cell centres at (expert, token): the first token at the top, as in a table.
        double tokensPerRow = (double)tokens / rows;
        heatmap.Extent = new CoordinateRect(-0.5, experts - 0.5, tokens == 0 ? 1 : tokens, 0);
        plot.Axes.SetLimits(-0.5, experts - 0.5, tokens == 0 ? 1 : tokens, 0);
        plot.Add.ColorBar(heatmap).Label = "|weight|";
        plot.Axes.Left.Label.Text = rows < tokens ? string.Create(CultureInfo.InvariantCulture, $"token (rows average {tokensPerRow:0.#})") : "token";
        plot.Grid.IsVisible = false;
        Title(plot, rows < tokens ? $"|weight| per token and expert ({tokens} tokens, {rows} rows)" : $"|weight| per token and expert ({tokens} tokens)");
        return (plot, ExpertAxis(plot, expertNames, experts));
    }

    /// <summary>Bars of slots per expert, with the top-1 tokens of each expert drawn inside.</summary>
    public static (Plot Plot, int Width) LoadChart(RoutingStatistics statistics, IReadOnlyList<string> expertNames)
    {
        int experts = statistics.ExpertCount;
        var plot = new Plot();
        var slots = new List<Bar>(experts);
        var top1 = new List<Bar>(experts);
        for (int e = 0; e < experts; e++)
        {
            slots.Add(new Bar { Position = e, Value = statistics.Load[e], FillColor = LoadColour, Size = 0.8, LineWidth = 0 });
            top1.Add(new Bar { Position = e, Value = statistics.TopOneCount[e], FillColor = TopOneColour, Size = 0.4, LineWidth = 0 });
        }
        plot.Add.Bars(slots);
        plot.Add.Bars(top1);
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "slots", FillColor = LoadColour });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "top-1 tokens", FillColor = TopOneColour });
        plot.Legend.Alignment = Alignment.UpperRight;
        plot.ShowLegend();
        plot.Axes.Margins(bottom: 0, top: 0.15);
        plot.Axes.SetLimitsX(-0.5, experts - 0.5);
        plot.Axes.Left.Label.Text = "tokens";
        Title(plot, $"Load per expert: {statistics.UnusedExperts} of {experts} unused");
        return (plot, ExpertAxis(plot, expertNames, experts));
    }

    private static void Title(Plot plot, string text)
    {
        plot.Axes.Title.Label.Text = text;
        plot.Axes.Title.Label.FontSize = 16;
    }

    /// <summary>
    /// Names the experts under their columns (slanted when there are many or long names; every few when even
    /// slanted names would overlap) and returns the picture's width: about 40 pixels a column, at least 640.
    /// </summary>
    private static int ExpertAxis(Plot plot, IReadOnlyList<string> expertNames, int experts)
    {
        const int columnWidth = 40, maxWidth = 4000;
        int width = Math.Clamp(200 + experts * columnWidth, 640, maxWidth);
        double pixelsPerColumn = (width - 200.0) / Math.Max(1, experts);
        int step = Math.Max(1, (int)Math.Ceiling(16 / pixelsPerColumn)); // a slanted 12-pixel label needs about 16 pixels
        var ticks = new ScottPlot.TickGenerators.NumericManual();
        int longest = 0;
        for (int e = 0; e < experts; e += step)
        {
            string name = e < expertNames.Count ? expertNames[e] : e.ToString(CultureInfo.InvariantCulture);
            longest = Math.Max(longest, name.Length);
            ticks.AddMajor(e, name);
        }
        plot.Axes.Bottom.TickGenerator = ticks;
        plot.Axes.Bottom.Label.Text = step == 1 ? "expert" : $"expert (every {step}th named)";
        if (longest * 7 > pixelsPerColumn * step)
        {
            plot.Axes.Bottom.TickLabelStyle.Rotation = -45;
            plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleRight;
            plot.Axes.Bottom.MinimumSize = Math.Min(30 + longest * 5, 200); // a slanted name's height: about 5 pixels a character
        }
        return width;
    }
}
