using MoErging.Execution;

namespace MoErging.Bench.Peers;

/// <summary>
/// The engine's managed allocations per warm forward at a weight precision, counted over the whole process. BenchmarkDotNet's
/// in-process MemoryDiagnoser also counts every thread of the process, but there libtorch's and the runtime's
/// own background work shares the count with ours; here nothing else runs.
/// </summary>
internal static class EngineAllocations
{
    public static double PerForward(Shape shape, WeightPrecision precision)
    {
        const int warmUp = 300, measured = 1000; // past tiered compilation's promotions, which allocate
        Workload[] set = Workload.Set(shape.Tokens, shape.Experts, precision);
        using Engine engine = Engine.Create(new EngineOptions { Backend = Backend.Cpu, WeightPrecision = precision });
        using Session session = engine.CreateSession();
        void Run(int calls)
        {
            for (int i = 0; i < calls; i++)
            {
                Workload w = set[i % set.Length];
                session.Forward(w.Module, w.Router, w.X, w.Decision, w.Y);
            }
        }
        Run(warmUp);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        Run(measured);
        return (GC.GetTotalAllocatedBytes(precise: true) - before) / (double)measured;
    }
}
