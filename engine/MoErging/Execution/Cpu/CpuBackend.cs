using System.Diagnostics.CodeAnalysis;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Cpu;

/// <summary>
/// The CPU backend: the engine's worker threads, shared by its sessions' executors, and the engine's
/// <see cref="WeightPrecision"/>. It runs every case. A module's experts are packed for the kernels
/// (<see cref="PackedModule"/>: A and Bᵀ in the shrink's and the expand's panels, at the engine's precision), and a
/// linear router's prototypes for the scoring kernel (<see cref="PackedPrototypes"/>), each made on first use and freed
/// like a GPU's upload (<see cref="HostCopies"/>): on <see cref="Release"/>, once its host is collected, or
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

    /// <summary>Copies held, packed modules and packed prototypes (for tests).</summary>
    public int CopyCount => _copies.Count;

    public bool Supports(Router? router, AdaptedModule module, Aggregation aggregation, [NotNullWhen(false)] out string? reason)
    {
        reason = null;
        return true;
    }

    /// <summary>The module's experts as the kernels read them, packed expert by expert on first use.</summary>
    public PackedModule Weights(AdaptedModule module) => _copies.Find<PackedModule>(module) ?? Pack(module);

    /// <summary>The router's prototypes packed into scoring panels at the engine's precision, made on first use.</summary>
    public PackedPrototypes Weights(LinearRouter router) => _copies.Find<PackedPrototypes>(router) ?? Pack(router);

    // The first conversions live in methods of their own: a lambda's captures would allocate on every call.
    private PackedModule Pack(AdaptedModule module) => _copies.GetOrMake(module, () => new PackedModule(module, precision));

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
/// A module's experts as a CPU engine's kernels read them: each expert's A and Bᵀ in the kernels' panels
/// (<see cref="CpuKernels.PackPanels{T}"/>: A in panels of <see cref="CpuKernels.ShrinkPanelRows"/> rank rows for the
/// shrink, Bᵀ in panels of <see cref="CpuKernels.ExpandPanelColumns"/> columns for the expand) at the engine's precision,
/// 64-byte aligned. Each expert is packed, in pinned arrays, the first time a forward runs it, so a lazy library decodes
/// only the experts that are routed to. The panels are a second copy of the expert's factors (padded to whole panels):
/// on them each step of either kernel reads one contiguous run.
/// </summary>
internal sealed unsafe class PackedModule
{
    private const int Alignment = 64;

    private readonly WeightPrecision _precision;
    private readonly Array?[] _a;
    private readonly Array?[] _bT;
    private readonly Lock _packing = new();

    public PackedModule(AdaptedModule module, WeightPrecision precision)
    {
        _precision = precision;
        _a = new Array?[module.ExpertCount];
        _bT = new Array?[module.ExpertCount];
    }

    /// <summary>
    /// Addresses of expert <paramref name="expert"/>'s A panels and Bᵀ panels, packing its factors <paramref name="f"/>
    /// on first use. May throw what decoding lazy factors throws; nothing is kept then, and the next call tries again.
    /// The factors are passed in, not held: a copy must not keep its host alive (<see cref="HostCopies"/>).
    /// </summary>
    public void Expert(LoraFactors f, int expert, out void* a, out void* bT)
    {
        if (Volatile.Read(ref _bT[expert]) is not Array packedBT)
        {
            lock (_packing)
            {
                if (_bT[expert] is null)
                {
                    var (heldA, heldTransposed) = f.Held;
                    // Aᵀ: k runs along A's rows (stride 1), the rank index across them (stride d_in).
                    Array packedA = Pack(heldA, f.Precision, f.InputDim, f.Rank, 1, f.InputDim, CpuKernels.ShrinkPanelRows);
                    Array packed = Pack(heldTransposed, f.Precision, f.Rank, f.OutputDim, f.OutputDim, 1, CpuKernels.ExpandPanelColumns);
                    // A is published first: a reader that sees Bᵀ finds A too.
                    _a[expert] = packedA;
                    Volatile.Write(ref _bT[expert], packed);
                }
                packedBT = _bT[expert]!;
            }
        }
        a = Aligned(_a[expert]!);
        bT = Aligned(packedBT);
    }

    /// <summary>A factor held at <paramref name="held"/>'s precision, packed at the engine's (converted first where they differ).</summary>
    private Array Pack(Array held, WeightPrecision heldPrecision, int rows, int columns, int rowStride, int columnStride, int panelColumns)
    {
        Array source = heldPrecision == _precision ? held : WeightStorage.Convert(held, heldPrecision, _precision);
        int elements = CpuKernels.PanelElements(rows, columns, panelColumns);
        Array storage = WeightStorage.Allocate(_precision, checked(elements + Alignment / WeightStorage.ElementSize(_precision)));
        if (source is float[] floats)
        {
            CpuKernels.PackPanels<float>(floats, rows, columns, rowStride, columnStride, panelColumns, new Span<float>(Aligned(storage), elements));
        }
        else
        {
            CpuKernels.PackPanels<ushort>((ushort[])source, rows, columns, rowStride, columnStride, panelColumns, new Span<ushort>(Aligned(storage), elements));
        }
        return storage;
    }

    /// <summary>The first 64-byte-aligned address in pinned storage: an aligned vector never straddles two cache lines.</summary>
    private static void* Aligned(Array storage) => (void*)(((nint)WeightStorage.Address(storage) + Alignment - 1) & ~(nint)(Alignment - 1));
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
