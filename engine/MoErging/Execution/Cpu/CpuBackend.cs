using System.Diagnostics.CodeAnalysis;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Cpu;

/// <summary>
/// The CPU backend: the engine's worker threads, shared by its sessions' executors, and the engine's
/// <see cref="WeightPrecision"/>. It runs every case. Factors a library holds at the engine's precision are read in
/// place; a module whose factors it holds at another gets a converted copy (<see cref="ConvertedModule"/>), and a linear
/// router's prototypes are always packed for the scoring kernel (<see cref="PackedPrototypes"/>), each made on first use
/// and freed like a GPU's upload (<see cref="HostCopies"/>): on <see cref="Release"/>, once its host is collected, or
/// at disposal.
/// </summary>
internal sealed class CpuBackend(int threads, WeightPrecision precision) : IBackend
{
    private readonly WorkerPool _pool = new(threads);

    // A CPU call has finished when it returns (and Release must not run during a forward at the module it frees):
    // no work is left that could read a copy when it goes.
    private readonly HostCopies _copies = new(static () => { });

    public int CpuThreads => _pool.Threads;

    public WeightPrecision Precision => precision;

    public WorkerPool Pool => _pool;

    public DeviceInfo? Device => null;

    public Accelerator? Accelerator => null;

    /// <summary>Copies held, converted modules and packed prototypes (for tests).</summary>
    public int CopyCount => _copies.Count;

    public bool Supports(Router? router, AdaptedModule module, Aggregation aggregation, [NotNullWhen(false)] out string? reason)
    {
        reason = null;
        return true;
    }

    /// <summary>
    /// The module's experts at the engine's precision: null when the library holds every one of them so (read them in
    /// place), else the engine's converted copy, made on first use.
    /// </summary>
    public ConvertedModule? Weights(AdaptedModule module) =>
        module.Precision == precision ? null : _copies.Find<ConvertedModule>(module) ?? Convert(module);

    /// <summary>The router's prototypes packed into scoring panels at the engine's precision, made on first use.</summary>
    public PackedPrototypes Weights(LinearRouter router) => _copies.Find<PackedPrototypes>(router) ?? Pack(router);

    // The first conversions live in methods of their own: a lambda's captures would allocate on every call.
    private ConvertedModule Convert(AdaptedModule module) => _copies.GetOrMake(module, () => new ConvertedModule(module, precision));

    private PackedPrototypes Pack(LinearRouter router) => _copies.GetOrMake(router, () => new PackedPrototypes(router, precision));

    public IExecutor CreateExecutor() => new CpuExecutor(this);

    public bool Release(object host) => _copies.Release(host);

    public void Dispose()
    {
        _copies.Dispose();
        _pool.Dispose();
    }
}

/// <summary>
/// A module's experts at a CPU engine's precision where the library holds some at another: each such expert's A and Bᵀ
/// widened exactly and rounded once to the engine's precision, in pinned arrays, made the first time a forward runs the
/// expert (so a lazy library decodes only the experts that are routed to); none for the experts whose own factors
/// already have the precision (read in place) and those that do not adapt the module.
/// </summary>
internal sealed unsafe class ConvertedModule
{
    private readonly WeightPrecision _precision;
    private readonly Array?[] _a;
    private readonly Array?[] _bTransposed;
    private readonly Lock _converting = new();

    public ConvertedModule(AdaptedModule module, WeightPrecision precision)
    {
        _precision = precision;
        _a = new Array?[module.ExpertCount];
        _bTransposed = new Array?[module.ExpertCount];
    }

    /// <summary>
    /// Address of expert <paramref name="expert"/>'s converted A, converting its factors <paramref name="f"/> on first
    /// use, or null when its own is read. May throw what decoding lazy factors throws; nothing is kept then, and the next
    /// call tries again. The factors are passed in, not held: a copy must not keep its host alive
    /// (<see cref="HostCopies"/>).
    /// </summary>
    public void* A(LoraFactors f, int expert)
    {
        if (Volatile.Read(ref _a[expert]) is Array a)
        {
            return WeightStorage.Address(a);
        }
        if (f.Precision == _precision)
        {
            return null;
        }
        lock (_converting)
        {
            if (_a[expert] is null)
            {
                var (held, heldTransposed) = f.Held;
                Array convertedA = WeightStorage.Convert(held, f.Precision, _precision);
                Array convertedBTransposed = WeightStorage.Convert(heldTransposed, f.Precision, _precision);
                // Bᵀ is published first: a reader that sees A finds Bᵀ too.
                _bTransposed[expert] = convertedBTransposed;
                Volatile.Write(ref _a[expert], convertedA);
            }
            return WeightStorage.Address(_a[expert]!);
        }
    }

    /// <summary>Address of expert <paramref name="expert"/>'s converted Bᵀ, or null when its own is read or <see cref="A"/> has not converted it yet.</summary>
    public void* BTransposed(int expert) => Volatile.Read(ref _bTransposed[expert]) is Array b ? WeightStorage.Address(b) : null;
}

/// <summary>
/// A linear router's prototypes in the scoring kernel's panels (<see cref="CpuScores.Pack"/>, of
/// <see cref="CpuScores.PanelWidth"/> experts), rounded once to the engine's precision, pinned. A float32 engine holds
/// them twice (the router's rows and these panels, padded to whole panels): prototypes are the smallest weights of a
/// library, and the packed layout doubled the scoring speed at 64 experts.
/// </summary>
internal sealed unsafe class PackedPrototypes
{
    private readonly Array _panels;

    public PackedPrototypes(LinearRouter router, WeightPrecision precision)
    {
        Width = CpuScores.PanelWidth(router.ExpertCount);
        _panels = CpuScores.Pack(router.Prototypes, router.ExpertCount, router.InputDim, Width, precision);
        PanelBytes = CpuScores.PanelElements(router.InputDim, Width) * WeightStorage.ElementSize(precision);
    }

    /// <summary>Experts per panel.</summary>
    public int Width { get; }

    /// <summary>Address of the first panel.</summary>
    public void* Address => WeightStorage.Address(_panels);

    /// <summary>Bytes from one panel to the next.</summary>
    public long PanelBytes { get; }
}
