using System.Diagnostics.CodeAnalysis;
using ILGPU.Runtime;
using MoErging.Experts;
using MoErging.Kernels;
using MoErging.Routing;

namespace MoErging.Execution.Cpu;

/// <summary>
/// The CPU backend: the engine's worker threads, shared by its sessions' executors, and the engine's
/// <see cref="WeightPrecision"/>. It runs every case. A module's experts are packed for the kernels
/// (<see cref="PackedModule"/>: Bᵀ in the expand's panels, A read in place where the library holds it at the engine's
/// precision), and a linear router's prototypes for the scoring kernel (<see cref="PackedPrototypes"/>), each made on first use
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
/// A module's experts as a CPU engine's kernels read them: each expert's Bᵀ in the expand's panels
/// (<see cref="CpuKernels.PackPanels{T}"/>) at the engine's precision, 64-byte aligned, and its A converted to that
/// precision where the library holds it at another (else A is read in place). Each expert is packed, in pinned arrays,
/// the first time a forward runs it, so a lazy library decodes only the experts that are routed to. The panels hold
/// a second copy of Bᵀ (r · d_out elements, padded to whole panels): the expand on them took an eighth to a third less
/// time.
/// </summary>
internal sealed unsafe class PackedModule
{
    private const int Alignment = 64;

    private readonly WeightPrecision _precision;
    private readonly Array?[] _a;
    private readonly Array?[] _panels;
    private readonly Lock _packing = new();

    public PackedModule(AdaptedModule module, WeightPrecision precision)
    {
        _precision = precision;
        _a = new Array?[module.ExpertCount];
        _panels = new Array?[module.ExpertCount];
    }

    /// <summary>
    /// Address of expert <paramref name="expert"/>'s Bᵀ panels, with its A's in <paramref name="a"/>, packing its factors
    /// <paramref name="f"/> on first use. May throw what decoding lazy factors throws; nothing is kept then, and the next
    /// call tries again. The factors are passed in, not held: a copy must not keep its host alive
    /// (<see cref="HostCopies"/>).
    /// </summary>
    public void* Expert(LoraFactors f, int expert, out void* a)
    {
        if (Volatile.Read(ref _panels[expert]) is not Array panels)
        {
            lock (_packing)
            {
                if (_panels[expert] is null)
                {
                    var (heldA, heldTransposed) = f.Held;
                    Array? convertedA = f.Precision == _precision ? null : WeightStorage.Convert(heldA, f.Precision, _precision);
                    Array bT = f.Precision == _precision ? heldTransposed : WeightStorage.Convert(heldTransposed, f.Precision, _precision);
                    Array packed = Pack(bT, f.Rank, f.OutputDim);
                    // A is published first: a reader that sees the panels finds A too.
                    _a[expert] = convertedA;
                    Volatile.Write(ref _panels[expert], packed);
                }
                panels = _panels[expert]!;
            }
        }
        a = _a[expert] is Array converted ? WeightStorage.Address(converted) : f.APointer;
        return Aligned(panels);
    }

    private Array Pack(Array bT, int rank, int columns)
    {
        int panelColumns = CpuKernels.PanelColumns, elements = CpuKernels.PanelElements(rank, columns, panelColumns);
        Array storage = WeightStorage.Allocate(_precision, checked(elements + Alignment / WeightStorage.ElementSize(_precision)));
        if (bT is float[] floats)
        {
            CpuKernels.PackPanels<float>(floats, rank, columns, panelColumns, new Span<float>(Aligned(storage), elements));
        }
        else
        {
            CpuKernels.PackPanels<ushort>((ushort[])bT, rank, columns, panelColumns, new Span<ushort>(Aligned(storage), elements));
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
