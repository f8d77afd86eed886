using MoErging.Experts;

namespace MoErging.Bench;

/// <summary>
/// The baseline: the same routed forward written the plain way, scalar and single-threaded, token by
/// token: Arrow scores, top-2, softmax, then for each chosen expert v = A x and y += w · s · B v with B
/// in PEFT's layout. Expert weights are re-read for every token that uses them.
/// </summary>
internal sealed class NaiveForward
{
    private readonly Workload _w;
    private readonly float[][] _a;
    private readonly float[][] _b;
    private readonly float[] _scaling;
    private readonly float[] _scores;
    private readonly float[] _v;

    public NaiveForward(Workload w)
    {
        _w = w;
        int experts = w.Module.ExpertCount;
        _a = new float[experts][];
        _b = new float[experts][];
        _scaling = new float[experts];
        for (int e = 0; e < experts; e++)
        {
            LoraFactors f = w.Module.Factors(e)!;
            _a[e] = f.A.ToArray();
            _b[e] = new float[f.OutputDim * f.Rank];
            f.CopyB(_b[e]);
            _scaling[e] = f.Scaling;
        }
        _scores = new float[experts];
        _v = new float[Workload.Rank];
    }

    public void Run()
    {
        int n = Workload.Dim, m = Workload.Dim, r = Workload.Rank, experts = _a.Length;
        ReadOnlySpan<float> p = _w.Router.Prototypes;
        float[] x = _w.X, y = _w.Y;
        float inverseTemperature = 1f / _w.Router.Options.Temperature;
        for (int t = 0; t < _w.Tokens; t++)
        {
            int row = t * n;
            for (int e = 0; e < experts; e++)
            {
                float dot = 0;
                for (int i = 0; i < n; i++)
                {
                    dot += x[row + i] * p[e * n + i];
                }
                _scores[e] = MathF.Abs(dot) * inverseTemperature;
            }
            int first = 0, second = -1;
            for (int e = 1; e < experts; e++)
            {
                if (_scores[e] > _scores[first])
                {
                    second = first;
                    first = e;
                }
                else if (second < 0 || _scores[e] > _scores[second])
                {
                    second = e;
                }
            }
            float z = MathF.Exp(_scores[second] - _scores[first]);
            Apply(first, 1 / (1 + z));
            Apply(second, z / (1 + z));

            void Apply(int e, float weight)
            {
                float[] a = _a[e], b = _b[e];
                for (int k = 0; k < r; k++)
                {
                    float s = 0;
                    for (int i = 0; i < n; i++)
                    {
                        s += a[k * n + i] * x[row + i];
                    }
                    _v[k] = s;
                }
                float c = weight * _scaling[e];
                for (int o = 0; o < m; o++)
                {
                    float s = 0;
                    for (int k = 0; k < r; k++)
                    {
                        s += b[o * r + k] * _v[k];
                    }
                    y[t * m + o] += c * s;
                }
            }
        }
    }
}
