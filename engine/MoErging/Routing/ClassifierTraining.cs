using System.Numerics.Tensors;

namespace MoErging.Routing;

/// <summary>The optimisation behind <see cref="ClassifierRouter.Train"/>, on standardised inputs.</summary>
internal sealed class SoftmaxRegression
{
    private readonly float[] _z;      // standardised rows [N, d]
    private readonly int[] _labels;
    private readonly double[] _mean;
    private readonly double[] _scale; // 1 / standard deviation
    private readonly int _n, _d, _experts;
    private float[] _w;               // [E, d]
    private float[] _b;               // [E]
    private readonly float[] _residual; // softmax − one-hot, [N, E]
    private readonly double[] _rowLoss;

    public SoftmaxRegression(ReadOnlySpan<float> rows, ReadOnlySpan<int> labels, int inputDim, int expertCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(inputDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(expertCount, 1);
        if (rows.IsEmpty || rows.Length % inputDim != 0 || rows.Length / inputDim != labels.Length)
        {
            throw new ArgumentException($"{rows.Length} values and {labels.Length} labels are not N ≥ 1 rows of d_in = {inputDim} with one label each", nameof(rows));
        }
        _n = labels.Length;
        _d = inputDim;
        _experts = expertCount;
        for (int t = 0; t < _n; t++)
        {
            if ((uint)labels[t] >= (uint)expertCount)
            {
                throw new ArgumentOutOfRangeException(nameof(labels), labels[t], $"label of row {t} must be an expert index in [0, {expertCount})");
            }
        }
        _labels = labels.ToArray();
        _mean = new double[_d];
        _scale = new double[_d];
        var squares = new double[_d];
        for (int i = 0; i < rows.Length; i++)
        {
            if (!float.IsFinite(rows[i]))
            {
                throw new ArgumentException($"row {i / _d}, column {i % _d} is {rows[i]}; training rows must be finite", nameof(rows));
            }
            _mean[i % _d] += rows[i];
        }
        for (int j = 0; j < _d; j++)
        {
            _mean[j] /= _n;
        }
        for (int i = 0; i < rows.Length; i++)
        {
            double c = rows[i] - _mean[i % _d];
            squares[i % _d] += c * c;
        }
        for (int j = 0; j < _d; j++)
        {
            double sd = Math.Sqrt(squares[j] / _n);
            _scale[j] = sd > 1e-12 ? 1 / sd : 1; // a constant column carries no information either way
        }
        _z = new float[rows.Length];
        for (int i = 0; i < rows.Length; i++)
        {
            _z[i] = (float)((rows[i] - _mean[i % _d]) * _scale[i % _d]);
        }
        _w = new float[_experts * _d];
        _b = new float[_experts];
        _residual = new float[_n * _experts];
        _rowLoss = new double[_n];
    }

    public ClassifierTrainingResult Run(ClassifierTrainingOptions options)
    {
        double objective = Objective(_w, _b, options.L2);
        var gradW = new float[_w.Length];
        var gradB = new float[_b.Length];
        double step = 1;
        int iteration = 0;
        for (; iteration < options.Iterations; iteration++)
        {
            double gradientSquared = Gradient(options.L2, gradW, gradB); // uses the residuals of the last Objective at (_w, _b)
            if (Math.Sqrt(gradientSquared) < options.Tolerance)
            {
                break;
            }
            bool accepted = false;
            for (int halving = 0; halving < 60 && !accepted; halving++, step /= 2)
            {
                float[] w = Step(_w, gradW, step), b = Step(_b, gradB, step);
                double trial = Objective(w, b, options.L2);
                if (trial <= objective - 0.5 * step * gradientSquared)
                {
                    (_w, _b, objective, accepted) = (w, b, trial, true);
                    step *= 4; // after the loop's halving: twice the accepted step is tried next
                }
            }
            if (!accepted)
            {
                Objective(_w, _b, options.L2); // restore the residuals of the current point
                break; // no step lowers the objective: at a minimum up to float32 resolution
            }
        }
        return new ClassifierTrainingResult(objective, Accuracy(), iteration);
    }

    /// <summary>W and b for raw rows: W' = W · diag(1/σ), b' = b − W' μ.</summary>
    public (float[] Weight, float[] Bias) RawParameters()
    {
        var weight = new float[_w.Length];
        var bias = new float[_experts];
        for (int e = 0; e < _experts; e++)
        {
            double shift = 0;
            for (int j = 0; j < _d; j++)
            {
                double w = _w[e * _d + j] * _scale[j];
                weight[e * _d + j] = (float)w;
                shift += w * _mean[j];
            }
            bias[e] = (float)(_b[e] - shift);
        }
        return (weight, bias);
    }

    /// <summary>Mean cross-entropy + λ/2 |W|²; leaves softmax − one-hot of every row in the residuals.</summary>
    private double Objective(float[] w, float[] b, double l2)
    {
        Parallel.For(0, _n, t =>
        {
            ReadOnlySpan<float> z = _z.AsSpan(t * _d, _d);
            Span<float> r = _residual.AsSpan(t * _experts, _experts);
            float max = float.NegativeInfinity;
            for (int e = 0; e < _experts; e++)
            {
                r[e] = TensorPrimitives.Dot(z, w.AsSpan(e * _d, _d)) + b[e];
                max = MathF.Max(max, r[e]);
            }
            double sum = 0;
            for (int e = 0; e < _experts; e++)
            {
                sum += Math.Exp(r[e] - max);
            }
            double logSum = max + Math.Log(sum);
            _rowLoss[t] = logSum - r[_labels[t]];
            for (int e = 0; e < _experts; e++)
            {
                r[e] = (float)Math.Exp(r[e] - logSum) - (e == _labels[t] ? 1f : 0f);
            }
        });
        double loss = 0;
        foreach (double l in _rowLoss)
        {
            loss += l; // a fixed order: the result does not depend on the scheduling
        }
        return loss / _n + 0.5 * l2 * TensorPrimitives.SumOfSquares(w);
    }

    /// <summary>The gradient at the point of the last <see cref="Objective"/> call; returns its squared norm.</summary>
    private double Gradient(double l2, float[] gradW, float[] gradB)
    {
        float inverseN = 1f / _n;
        Parallel.For(0, _experts, e =>
        {
            Span<float> g = gradW.AsSpan(e * _d, _d);
            g.Clear();
            float biasSum = 0;
            for (int t = 0; t < _n; t++)
            {
                float r = _residual[t * _experts + e];
                TensorPrimitives.MultiplyAdd(_z.AsSpan(t * _d, _d), r, g, g);
                biasSum += r;
            }
            TensorPrimitives.Multiply(g, inverseN, g);
            TensorPrimitives.MultiplyAdd(_w.AsSpan(e * _d, _d), (float)l2, g, g);
            gradB[e] = biasSum * inverseN;
        });
        return TensorPrimitives.SumOfSquares(gradW) + (double)TensorPrimitives.SumOfSquares(gradB);
    }

    private static float[] Step(float[] point, float[] gradient, double step)
    {
        var next = new float[point.Length];
        TensorPrimitives.MultiplyAdd(gradient, (float)-step, point, next);
        return next;
    }

    /// <summary>Share of rows whose highest-scoring expert (ties to the lower index) is their label, from the residuals.</summary>
    private double Accuracy()
    {
        int hits = 0;
        for (int t = 0; t < _n; t++)
        {
            ReadOnlySpan<float> r = _residual.AsSpan(t * _experts, _experts);
            int best = 0;
            for (int e = 1; e < _experts; e++)
            {
                // residual + one-hot is the probability
                float p = r[e] + (e == _labels[t] ? 1f : 0f), q = r[best] + (best == _labels[t] ? 1f : 0f);
                best = p > q ? e : best;
            }
            hits += best == _labels[t] ? 1 : 0;
        }
        return (double)hits / _n;
    }
}

/// <summary>How <see cref="ClassifierRouter.Train"/> runs.</summary>
/// <param name="Iterations">Most gradient steps (each tries step sizes until the objective drops).</param>
/// <param name="L2">λ, the weight of λ/2 · |W|² on standardised inputs; 0 for none.</param>
/// <param name="Tolerance">Stop once the gradient's norm falls below this.</param>
public sealed record ClassifierTrainingOptions(int Iterations = 300, double L2 = 1e-3, double Tolerance = 1e-6)
{
    internal void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(Iterations, 1, nameof(Iterations));
        if (!double.IsFinite(L2) || L2 < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(L2), L2, "λ must be finite and not negative");
        }
        if (!double.IsFinite(Tolerance) || Tolerance < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Tolerance), Tolerance, "the tolerance must be finite and not negative");
        }
    }
}

/// <summary>The outcome of training a classifier router.</summary>
/// <param name="Objective">The final mean cross-entropy plus the L2 penalty.</param>
/// <param name="TrainingAccuracy">Share of training rows whose top-scoring expert is their label.</param>
/// <param name="Iterations">Gradient steps taken.</param>
public sealed record ClassifierTrainingResult(double Objective, double TrainingAccuracy, int Iterations);
