// A program that uses the MoErging package as a consumer would: it writes four LoRA experts to disk as PEFT adapters with
// the library's own writer, loads them back, and runs one module's forward with an Arrow top-2 router and with fixed
// weights, on the CPU backend and on the GPU kernels (ILGPU's CPU accelerator, so the kernels package and ILGPU load
// too). Each output is checked against a float64 reference computed below from the factors it wrote; it exits 1 on a
// mismatch, naming the first one.
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Formats;
using MoErging.Routing;

const int Experts = 4, InputDim = 48, OutputDim = 40, Rank = 4, Tokens = 12, TopK = 2;
const float Scaling = 0.5f;
// float32 sums of 48 products against float64: a few units in the last place, far below this.
const double Tolerance = 1e-4; // |y - reference| <= Tolerance * (1 + |reference|), element by element

var random = new Random(7);
float[] Draw(int n) => Enumerable.Range(0, n).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
float[][] a = Enumerable.Range(0, Experts).Select(_ => Draw(Rank * InputDim)).ToArray();   // [r, d_in]
float[][] b = Enumerable.Range(0, Experts).Select(_ => Draw(OutputDim * Rank)).ToArray();  // [d_out, r]
float[] x = Draw(Tokens * InputDim), yBase = Draw(Tokens * OutputDim);
float[] fixedWeights = [0.5f, -0.25f, 1f, 0.125f];
double[] xd = x.Select(v => (double)v).ToArray();

// The reference: Arrow's prototype is the top right singular vector of ΔW = B A, here by power iteration on ΔWᵀΔW.
double[][] delta = Enumerable.Range(0, Experts).Select(e => DeltaW(a[e], b[e])).ToArray();
double[][] prototypes = delta.Select(TopRightSingularVector).ToArray();
var arrowIds = new int[Tokens][];
var arrowWeights = new double[Tokens][];
for (int t = 0; t < Tokens; t++)
{
    double[] scores = prototypes.Select(p => Math.Abs(Dot(xd.AsSpan(t * InputDim, InputDim), p))).ToArray();
    int[] order = Enumerable.Range(0, Experts).OrderByDescending(e => scores[e]).ToArray();
    if (scores[order[TopK - 1]] - scores[order[TopK]] < 1e-3 * scores[order[0]])
    {
        throw new InvalidOperationException($"token {t}: the reference's top-{TopK} is too close to call; change the seed");
    }
    arrowIds[t] = order[..TopK];
    double[] exp = arrowIds[t].Select(e => Math.Exp(scores[e] - scores[order[0]])).ToArray(); // softmax, temperature 1
    arrowWeights[t] = exp.Select(v => v / exp.Sum()).ToArray();
}
double[] arrowReference = Mix(t => arrowIds[t].Zip(arrowWeights[t]));
double[] fixedReference = Mix(_ => Enumerable.Range(0, Experts).Select(e => (e, (double)fixedWeights[e])));

string root = Path.Combine(Path.GetTempPath(), $"moerging-consumer-{Guid.NewGuid():N}");
var failures = new List<string>();
try
{
    var directories = new List<string>();
    for (int e = 0; e < Experts; e++)
    {
        var factors = new LoraFactors(a[e], b[e], Rank, InputDim, OutputDim, Scaling);
        string directory = Path.Combine(root, $"expert-{e}");
        PeftAdapter.Write(directory, new Expert($"expert-{e}", [KeyValuePair.Create("model.layers.0.self_attn.q_proj", factors)]));
        directories.Add(directory);
    }
    ExpertLibrary library = ExpertLibrary.Load(directories);
    AdaptedModule module = library.Module("q_proj");

    foreach (Backend backend in new[] { Backend.Cpu, Backend.GpuSimulator })
    {
        using Engine engine = Engine.Create(new EngineOptions { Backend = backend });
        using Session session = engine.CreateSession();
        var decision = new RoutingDecision();
        int before = failures.Count;

        float[] y = (float[])yBase.Clone();
        session.Forward(module, new ArrowRouter(module, new RoutingOptions(TopK)), x, decision, y);
        for (int t = 0; t < Tokens; t++)
        {
            if (!decision.ExpertIdsOf(t).SequenceEqual(arrowIds[t]))
            {
                failures.Add($"{backend} Arrow: token {t} routed to [{string.Join(", ", decision.ExpertIdsOf(t).ToArray())}], the reference to [{string.Join(", ", arrowIds[t])}]");
            }
        }
        Compare($"{backend} Arrow top-{TopK}", y, arrowReference);

        y = (float[])yBase.Clone();
        session.Forward(module, new FixedRouter(fixedWeights), x, decision, y);
        Compare($"{backend} fixed weights", y, fixedReference);
        Console.WriteLine($"{backend} ({engine.BackendReason}): Arrow top-{TopK} and fixed weights {(failures.Count == before ? "match the reference" : "MISMATCH")}");
    }
}
finally
{
    if (Directory.Exists(root))
    {
        Directory.Delete(root, recursive: true);
    }
}

if (failures.Count > 0)
{
    failures.ForEach(f => Console.Error.WriteLine(f));
    return 1;
}
Console.WriteLine($"forward matches the float64 reference (tolerance {Tolerance:G} relative) for {Tokens} tokens, {Experts} experts");
return 0;

// y_base + Σ (e, w) of token t: w · s · ΔW_e x_t, in float64.
double[] Mix(Func<int, IEnumerable<(int Expert, double Weight)>> slots)
{
    var y = yBase.Select(v => (double)v).ToArray();
    for (int t = 0; t < Tokens; t++)
    {
        foreach (var (e, w) in slots(t))
        {
            for (int o = 0; o < OutputDim; o++)
            {
                y[t * OutputDim + o] += w * Scaling * Dot(xd.AsSpan(t * InputDim, InputDim), delta[e].AsSpan(o * InputDim, InputDim));
            }
        }
    }
    return y;
}

void Compare(string what, float[] y, double[] reference)
{
    for (int i = 0; i < y.Length; i++)
    {
        if (!(Math.Abs(y[i] - reference[i]) <= Tolerance * (1 + Math.Abs(reference[i]))))
        {
            failures.Add($"{what}: y[{i / OutputDim}, {i % OutputDim}] = {y[i]:R}, the reference {reference[i]:R}");
            return;
        }
    }
}

static double[] DeltaW(float[] a, float[] b) // B A, [d_out, d_in]
{
    var w = new double[OutputDim * InputDim];
    for (int o = 0; o < OutputDim; o++)
    {
        for (int i = 0; i < InputDim; i++)
        {
            for (int r = 0; r < Rank; r++)
            {
                w[o * InputDim + i] += (double)b[o * Rank + r] * a[r * InputDim + i];
            }
        }
    }
    return w;
}

static double[] TopRightSingularVector(double[] w)
{
    var v = Enumerable.Range(0, InputDim).Select(i => 1.0 + i * 1e-3).ToArray();
    for (int iteration = 0; iteration < 2000; iteration++)
    {
        var wv = new double[OutputDim];
        for (int o = 0; o < OutputDim; o++)
        {
            wv[o] = Dot(v, w.AsSpan(o * InputDim, InputDim));
        }
        var next = new double[InputDim];
        for (int o = 0; o < OutputDim; o++)
        {
            for (int i = 0; i < InputDim; i++)
            {
                next[i] += w[o * InputDim + i] * wv[o];
            }
        }
        double norm = Math.Sqrt(next.Sum(c => c * c));
        v = next.Select(c => c / norm).ToArray();
    }
    return v;
}

static double Dot(ReadOnlySpan<double> x, ReadOnlySpan<double> y)
{
    double sum = 0;
    for (int i = 0; i < x.Length; i++)
    {
        sum += x[i] * y[i];
    }
    return sum;
}
