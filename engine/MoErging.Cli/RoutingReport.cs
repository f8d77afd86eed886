using System.Globalization;
using System.Text.Json;
using MoErging.Routing;

namespace MoErging.Cli;

/// <summary>
/// The routing report <c>moerge route --report DIR</c> writes: <c>heatmap.png</c> (tokens down, experts
/// across, colour = |weight|), <c>load.png</c> (slots and top-1 tokens per expert) and
/// <c>statistics.json</c> (the same numbers, with expert names).
/// </summary>
internal static class RoutingReport
{
    private const int MaxRows = 400;     // tokens beyond this are averaged into rows
    private const int Margin = 8, Left = 64, Top = 36, Bottom = 40, ColourBar = 96;

    // Viridis at five stops: low values dark blue-purple, high values yellow.
    private static readonly Rgb[] Stops = [new(68, 1, 84), new(59, 82, 139), new(33, 145, 140), new(94, 201, 98), new(253, 231, 37)];
    private static readonly Rgb LoadColour = new(59, 82, 139), TopOneColour = new(253, 160, 37);

    /// <summary>Adds the three files in <paramref name="directory"/> (made if needed) to a command's outputs; returns their paths.</summary>
    public static string[] AddTo(OutputFiles outputs, string directory, RoutingDecision decision, IReadOnlyList<string> expertNames)
    {
        RoutingStatistics statistics = RoutingStatistics.Of(decision);
        string heatmap = Path.Combine(directory, "heatmap.png"), load = Path.Combine(directory, "load.png"), json = Path.Combine(directory, "statistics.json");
        byte[] text = System.Text.Encoding.UTF8.GetBytes(Json(statistics, expertNames) + "\n");
        outputs.Directory(directory)
            .Add(heatmap, Heatmap(decision).WritePng)
            .Add(load, LoadChart(statistics).WritePng)
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

    /// <summary>Tokens × experts, colour = |weight| (rows average groups of tokens when T is large).</summary>
    public static Raster Heatmap(RoutingDecision decision)
    {
        int tokens = decision.TokenCount, experts = decision.ExpertCount, rows = Math.Clamp(tokens, 1, MaxRows);
        var cells = new double[rows * experts];
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
                        cells[r * experts + e] += Math.Abs(decision.WeightsOf(t)[s]) / (t1 - t0);
                    }
                }
            }
        }
        double max = cells.Length == 0 ? 0 : cells.Max();
        int cellWidth = Math.Clamp(800 / experts, 3, 40), cellHeight = Math.Clamp(480 / rows, 1, 16);
        string title = $"|WEIGHT| PER TOKEN AND EXPERT ({tokens} TOKENS{(rows < tokens ? $", {rows} ROWS" : "")})";
        int width = Math.Max(Left + experts * cellWidth + ColourBar, Raster.TextWidth(title, 2) + 2 * Margin);
        var picture = new Raster(width, Top + rows * cellHeight + Bottom);
        picture.Text(Margin, Margin, title, 2, Rgb.Black);
        for (int r = 0; r < rows; r++)
        {
            for (int e = 0; e < experts; e++)
            {
                picture.Fill(Left + e * cellWidth, Top + r * cellHeight, cellWidth, cellHeight, Colour(max == 0 ? 0 : cells[r * experts + e] / max));
            }
        }
        int step = Math.Max(1, rows / 6);
        for (int r = 0; r < rows; r += step)
        {
            string label = ((long)r * tokens / rows).ToString(CultureInfo.InvariantCulture);
            picture.Text(Left - 4 - Raster.TextWidth(label, 1), Top + r * cellHeight, label, 1, Rgb.Black);
        }
        picture.Text(Margin, Top - 12, "TOKEN", 1, Rgb.Black);
        ExpertTicks(picture, experts, cellWidth, Top + rows * cellHeight + 4);
        // The colour bar: 0 at the bottom, the largest cell at the top.
        int barX = Left + experts * cellWidth + 12, barHeight = rows * cellHeight;
        for (int y = 0; y < barHeight; y++)
        {
            picture.Fill(barX, Top + y, 16, 1, Colour(barHeight == 1 ? 1 : 1 - (double)y / (barHeight - 1)));
        }
        picture.Text(barX + 20, Top, max.ToString("0.###", CultureInfo.InvariantCulture), 1, Rgb.Black);
        picture.Text(barX + 20, Top + barHeight - Raster.TextHeight(1), "0", 1, Rgb.Black);
        return picture;
    }

    /// <summary>Bars of slots per expert, with the top-1 tokens of each expert drawn inside.</summary>
    public static Raster LoadChart(RoutingStatistics statistics)
    {
        int experts = statistics.ExpertCount, barWidth = Math.Clamp(800 / experts, 3, 40);
        const int plotHeight = 300;
        string title = $"LOAD PER EXPERT: {statistics.UnusedExperts} OF {experts} UNUSED";
        int width = Math.Max(Left + experts * barWidth + ColourBar, Raster.TextWidth(title, 2) + 2 * Margin);
        var picture = new Raster(width, Top + 14 + plotHeight + Bottom);
        picture.Text(Margin, Margin, title, 2, Rgb.Black);
        int plotTop = Top + 14;
        picture.Fill(Left, plotTop + plotHeight, experts * barWidth, 1, Rgb.Black);
        picture.Fill(Left - 1, plotTop, 1, plotHeight, Rgb.Black);
        int max = Math.Max(1, statistics.Load.Max());
        picture.Text(Left - 4 - Raster.TextWidth(max.ToString(CultureInfo.InvariantCulture), 1), plotTop, max.ToString(CultureInfo.InvariantCulture), 1, Rgb.Black);
        picture.Text(Left - 10, plotTop + plotHeight - Raster.TextHeight(1), "0", 1, Rgb.Black);
        for (int e = 0; e < experts; e++)
        {
            int load = (int)Math.Round((double)statistics.Load[e] / max * plotHeight);
            int top1 = (int)Math.Round((double)statistics.TopOneCount[e] / max * plotHeight);
            int gap = barWidth > 4 ? 1 : 0;
            picture.Fill(Left + e * barWidth + gap, plotTop + plotHeight - load, barWidth - 2 * gap, load, LoadColour);
            picture.Fill(Left + e * barWidth + gap + (barWidth - 2 * gap) / 4, plotTop + plotHeight - top1, Math.Max(1, (barWidth - 2 * gap) / 2), top1, TopOneColour);
        }
        ExpertTicks(picture, experts, barWidth, plotTop + plotHeight + 4);
        int legendX = Left + experts * barWidth + 12;
        picture.Fill(legendX, plotTop, 10, 10, LoadColour);
        picture.Text(legendX + 14, plotTop + 2, "SLOTS", 1, Rgb.Black);
        picture.Fill(legendX, plotTop + 16, 10, 10, TopOneColour);
        picture.Text(legendX + 14, plotTop + 18, "TOP-1", 1, Rgb.Black);
        return picture;
    }

    /// <summary>Expert indices under the columns (every few when they would overlap) and the axis name.</summary>
    private static void ExpertTicks(Raster picture, int experts, int columnWidth, int y)
    {
        int widest = Raster.TextWidth((experts - 1).ToString(CultureInfo.InvariantCulture), 1);
        int step = Math.Max(1, (widest + 6 + columnWidth - 1) / columnWidth);
        for (int e = 0; e < experts; e += step)
        {
            string label = e.ToString(CultureInfo.InvariantCulture);
            picture.Text(Left + e * columnWidth + (columnWidth - Raster.TextWidth(label, 1)) / 2, y, label, 1, Rgb.Black);
        }
        picture.Text(Left, y + 14, "EXPERT (NAMES IN STATISTICS.JSON)", 1, Rgb.Black);
    }

    /// <summary>The viridis colour of t ∈ [0, 1].</summary>
    private static Rgb Colour(double t)
    {
        double position = Math.Clamp(t, 0, 1) * (Stops.Length - 1);
        int i = Math.Min((int)position, Stops.Length - 2);
        return Rgb.Lerp(Stops[i], Stops[i + 1], position - i);
    }
}
