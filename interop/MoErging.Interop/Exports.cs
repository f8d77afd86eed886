using System.Runtime.InteropServices;
using System.Text;
using MoErging.Execution;
using MoErging.Experts;
using MoErging.Routing;

namespace MoErging.Interop;

/// <summary>
/// The entry points libmoerging.so calls, one per function of moerging.h that needs the engine (the C side
/// answers version, default-options and NULL-free calls itself, and hands every option struct over in its
/// current full size). Every entry point catches every exception and returns a status; the message goes
/// to the caller's thread (see <see cref="Errors"/>). The checks made here name the header's parameters;
/// the engine's own checks name its managed ones.
/// </summary>
public static unsafe class Exports
{
    /// <summary>
    /// What each entry point's exported name starts with (moerging_managed_Initialize, ...): the NativeAOT library
    /// MoErging.Interop.so exports them under these names for libmoerging.so's dlsym; the hosted build finds the
    /// same methods by their method names through hostfxr.
    /// </summary>
    public const string EntryPointPrefix = "moerging_managed_";

    /// <summary>MOE_ABI_VERSION of the header this assembly implements.</summary>
    public const int AbiVersion = 2;

    /// <summary>The managed backend of each moe_backend value, by number.</summary>
    private static readonly Backend[] Backends = [Backend.Auto, Backend.Cpu, Backend.Cuda, Backend.OpenCL, Backend.GpuSimulator];

    /// <summary>
    /// Writes one warning line to the host's stderr. C stdio does the writing: Console.Error would hold a duplicate
    /// of descriptor 2 taken on first use, and so miss a host's later redirection of it.
    /// </summary>
    private static delegate* unmanaged<byte*, nuint, void> _writeWarning;

    /// <summary>Called once by libmoerging.so before any other entry point.</summary>
    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(Initialize))]
    public static int Initialize(delegate* unmanaged<byte*, nuint, void> setError, delegate* unmanaged<byte*, nuint, void> writeWarning, int abiVersion)
    {
        try
        {
            Errors.Initialize(setError);
            _writeWarning = writeWarning;
            if (abiVersion != AbiVersion)
            {
                throw new NotSupportedException($"libmoerging.so speaks ABI {abiVersion} but MoErging.Interop.dll speaks ABI {AbiVersion}; use the two from one build");
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(EngineCreate))]
    public static int EngineCreate(NativeEngineOptions* options, nint* engine)
    {
        try
        {
            ClearOut(engine, "engine");
            // A backend the machine lacks is a BackendUnavailableException saying what was looked for.
            Engine created = Engine.Create(new EngineOptions
            {
                Backend = ToManaged(options->Backend),
                CpuThreads = options->CpuThreads,
                WeightPrecision = ToPrecision(options->WeightPrecision),
            });
            try
            {
                *engine = Handles.Add(new EngineHandle(created));
            }
            catch
            {
                created.Dispose();
                throw;
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(EngineInfo))]
    public static int EngineInfo(nint engine, int* backend, byte* reason, nuint capacity, nuint* length)
    {
        try
        {
            Engine e = Handles.Get<EngineHandle>(engine, "engine").Engine;
            int native = Array.IndexOf(Backends, e.Backend);
            CopyString(e.BackendReason, reason, capacity, length);
            if (backend != null)
            {
                *backend = native;
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(EngineFree))]
    public static int EngineFree(nint engine)
    {
        try
        {
            EngineHandle handle = Handles.Get<EngineHandle>(engine, "engine");
            lock (handle)
            {
                if (handle.Sessions > 0)
                {
                    throw new ArgumentException($"engine still has {handle.Sessions} live session(s); free them first");
                }
                Handles.Remove<EngineHandle>(engine, "engine");
            }
            handle.Engine.Dispose();
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(SessionCreate))]
    public static int SessionCreate(nint engine, nint* session)
    {
        try
        {
            ClearOut(session, "session");
            EngineHandle owner = Handles.Get<EngineHandle>(engine, "engine");
            lock (owner)
            {
                // Checked again under the lock: a concurrent moe_engine_free may have won.
                Handles.Get<EngineHandle>(engine, "engine");
                *session = Handles.Add(new SessionHandle(owner, owner.Engine.CreateSession()));
                owner.Sessions++;
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(SessionFree))]
    public static int SessionFree(nint session)
    {
        try
        {
            SessionHandle handle = Handles.Get<SessionHandle>(session, "session");
            lock (handle.Owner)
            {
                // A forward running on another thread holds the claim: refuse rather than dispose under it.
                // The claim is never released, so a late call on the freed session cannot start either.
                _ = handle.Enter();
                Handles.Remove<SessionHandle>(session, "session");
                handle.Owner.Sessions--;
            }
            handle.Session.Dispose();
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(LibraryLoad))]
    public static int LibraryLoad(byte** directories, nuint count, NativeLibraryOptions* options, nint* library)
    {
        try
        {
            ClearOut(library, "library");
            ExpertLibrary loaded = ExpertLibrary.Load(Strings(directories, count, "directories"), new ExpertLibraryOptions
            {
                Lazy = options->Lazy != 0,
                Names = options->Names == null ? null : OptionalStrings(options->Names, count, "names"),
                RequireSameBaseModel = options->Strict != 0,
                WeightPrecision = ToPrecision(options->WeightPrecision),
            });
            var modules = new nint[loaded.Modules.Count];
            for (int m = 0; m < modules.Length; m++)
            {
                modules[m] = Handles.Add(loaded.Modules[m]);
            }
            *library = Handles.Add(new LibraryHandle(loaded, modules));
            if (options->Quiet == 0)
            {
                WriteWarnings(loaded.Warnings);
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(LibraryInfo))]
    public static int LibraryInfo(nint library, nuint* expertCount, nuint* moduleCount)
    {
        try
        {
            ExpertLibrary lib = Handles.Get<LibraryHandle>(library, "library").Library;
            if (expertCount != null)
            {
                *expertCount = (nuint)lib.ExpertCount;
            }
            if (moduleCount != null)
            {
                *moduleCount = (nuint)lib.Modules.Count;
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(LibraryExpertName))]
    public static int LibraryExpertName(nint library, nuint expert, byte* buffer, nuint capacity, nuint* length)
    {
        try
        {
            ExpertLibrary lib = Handles.Get<LibraryHandle>(library, "library").Library;
            if (expert >= (nuint)lib.ExpertCount)
            {
                throw new ArgumentException($"expert is {expert}; the library has experts 0 to {lib.ExpertCount - 1}");
            }
            CopyString(lib.Experts[(int)expert].Name, buffer, capacity, length);
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(LibraryModule))]
    public static int LibraryModule(nint library, nuint index, nint* module)
    {
        try
        {
            ClearOut(module, "module");
            LibraryHandle lib = Handles.Get<LibraryHandle>(library, "library");
            if (index >= (nuint)lib.Modules.Length)
            {
                throw new ArgumentException($"index is {index}; the library has modules 0 to {lib.Modules.Length - 1}");
            }
            *module = lib.Modules[(int)index];
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(LibraryFindModule))]
    public static int LibraryFindModule(nint library, byte* name, nint* module)
    {
        try
        {
            ClearOut(module, "module");
            LibraryHandle lib = Handles.Get<LibraryHandle>(library, "library");
            *module = lib.Modules[lib.Library.Module(Utf8(name, "name")).Index];
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(LibraryFree))]
    public static int LibraryFree(nint library)
    {
        try
        {
            LibraryHandle lib = Handles.Remove<LibraryHandle>(library, "library");
            foreach (nint module in lib.Modules)
            {
                Handles.Remove<AdaptedModule>(module, "module");
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(ModuleInfo))]
    public static int ModuleInfo(nint module, nuint* inputDim, nuint* outputDim, nuint* expertCount, nuint* maxRank)
    {
        try
        {
            AdaptedModule m = Handles.Get<AdaptedModule>(module, "module");
            if (inputDim != null)
            {
                *inputDim = (nuint)m.InputDim;
            }
            if (outputDim != null)
            {
                *outputDim = (nuint)m.OutputDim;
            }
            if (expertCount != null)
            {
                *expertCount = (nuint)m.ExpertCount;
            }
            if (maxRank != null)
            {
                *maxRank = (nuint)m.MaxRank;
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(ModuleName))]
    public static int ModuleName(nint module, byte* buffer, nuint capacity, nuint* length)
    {
        try
        {
            CopyString(Handles.Get<AdaptedModule>(module, "module").Name, buffer, capacity, length);
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterCreateUniform))]
    public static int RouterCreateUniform(nuint expertCount, nint* router)
    {
        try
        {
            ClearOut(router, "router");
            if (expertCount is < 1 or > int.MaxValue)
            {
                throw new ArgumentException($"expert_count is {expertCount}; it must be in [1, {int.MaxValue}]");
            }
            *router = Handles.Add(new UniformRouter((int)expertCount));
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterCreateFixed))]
    public static int RouterCreateFixed(float* weights, nuint count, nint* router)
    {
        try
        {
            ClearOut(router, "router");
            ReadOnlySpan<float> w = Input(weights, count, "weights");
            if (w.IsEmpty)
            {
                throw new ArgumentException("weights is empty; a fixed router needs one weight per expert");
            }
            *router = Handles.Add(new FixedRouter(w));
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterCreateArrow))]
    public static int RouterCreateArrow(nint module, NativeArrowOptions* options, nint* router)
    {
        try
        {
            ClearOut(router, "router");
            AdaptedModule m = Handles.Get<AdaptedModule>(module, "module");
            // Zero fields take the library's defaults: its experts' arrow_config where they agree, else PEFT's.
            RoutingOptions defaults = ArrowRouter.DefaultOptionsFor(m.Library);
            var routing = new RoutingOptions(options->TopK == 0 ? defaults.TopK : options->TopK,
                options->Temperature == 0 ? defaults.Temperature : options->Temperature);
            *router = Handles.Add(new ArrowRouter(m, routing));
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterCreateLinear))]
    public static int RouterCreateLinear(float* prototypes, nuint prototypeCount, nuint expertCount, nuint inputDim,
        NativeLinearRouterOptions* options, nint* router)
    {
        try
        {
            ClearOut(router, "router");
            if (expertCount is < 1 or > int.MaxValue || inputDim is < 1 or > int.MaxValue)
            {
                throw new ArgumentException($"expert_count ({expertCount}) and input_dim ({inputDim}) must be in [1, {int.MaxValue}]");
            }
            ReadOnlySpan<float> p = Input(prototypes, prototypeCount, "prototypes");
            if ((ulong)p.Length != (ulong)expertCount * inputDim)
            {
                throw new ArgumentException($"prototype_count is {prototypeCount}; expert_count × input_dim = {expertCount} × {inputDim} need {(ulong)expertCount * inputDim}");
            }
            InputNormalization normalization = options->Normalization switch
            {
                0 => InputNormalization.None,
                1 => InputNormalization.LayerNorm,
                2 => InputNormalization.L2,
                _ => throw new ArgumentException($"normalization is {options->Normalization}; use a moe_normalization value (0 to 2)"),
            };
            ScoreFunction score = options->ScoreFunction switch
            {
                0 => ScoreFunction.Identity,
                1 => ScoreFunction.AbsoluteValue,
                _ => throw new ArgumentException($"score_function is {options->ScoreFunction}; use a moe_score_function value (0 or 1)"),
            };
            ReadOnlySpan<float> bias = Input(options->Bias, options->BiasCount, "bias");
            *router = Handles.Add(new LinearRouter(p, (int)inputDim, new RoutingOptions(options->TopK, options->Temperature),
                normalization, score, bias));
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterCreatePhatgoose))]
    public static int RouterCreatePhatgoose(nint module, byte** directories, nuint count, NativeRoutingOptions* options, nint* router) =>
        CreateFromExpertFiles(module, directories, count, options, router, m => PhatgooseRouter.DefaultOptionsFor(m.ExpertCount).TopK, PhatgooseRouter.Load);

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterCreateCentroid))]
    public static int RouterCreateCentroid(nint module, byte** directories, nuint count, NativeRoutingOptions* options, nint* router) =>
        CreateFromExpertFiles(module, directories, count, options, router, m => m.ExpertCount, (m, d, o) => CentroidRouter.Load(m, d, o));

    /// <summary>A router built from one file per expert directory (gates, centroids); top-k 0 takes <paramref name="defaultTopK"/>.</summary>
    private static int CreateFromExpertFiles(nint module, byte** directories, nuint count, NativeRoutingOptions* options, nint* router,
        Func<AdaptedModule, int> defaultTopK, Func<AdaptedModule, IReadOnlyList<string>, RoutingOptions, Router> load)
    {
        try
        {
            ClearOut(router, "router");
            AdaptedModule m = Handles.Get<AdaptedModule>(module, "module");
            RoutingOptions routing = options->ToManaged(defaultTopK(m));
            *router = Handles.Add(load(m, Strings(directories, count, "directories"), routing));
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterCreateClassifier))]
    public static int RouterCreateClassifier(byte* path, NativeRoutingOptions* options, nint* router)
    {
        try
        {
            ClearOut(router, "router");
            // E is in the file, and the default top-k (dense) depends on it.
            ClassifierRouter loaded = ClassifierRouter.Load(Utf8(path, "path"));
            RoutingOptions routing = options->ToManaged(loaded.ExpertCount);
            *router = Handles.Add(new ClassifierRouter(loaded.Prototypes, loaded.Bias, loaded.InputDim, routing, loaded.ExpertNames));
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterInfo))]
    public static int RouterInfo(nint router, nuint* expertCount, nuint* topK)
    {
        try
        {
            Router r = Handles.Get<Router>(router, "router");
            if (expertCount != null)
            {
                *expertCount = (nuint)r.ExpertCount;
            }
            if (topK != null)
            {
                *topK = (nuint)r.TopK;
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(RouterFree))]
    public static int RouterFree(nint router)
    {
        try
        {
            Handles.Remove<Router>(router, "router");
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(Forward))]
    public static int Forward(nint session, nint module, nint router, float* x, nuint xCount, float* yBase, float* y,
        nuint yCount, int* expertIds, float* expertWeights, nuint slotCount)
    {
        try
        {
            SessionHandle s = Handles.Get<SessionHandle>(session, "session");
            AdaptedModule m = Handles.Get<AdaptedModule>(module, "module");
            Router r = Handles.Get<Router>(router, "router");
            ReadOnlySpan<float> xs = Input(x, xCount, "x");
            int tokens = Rows(m, xCount);
            long slots = (long)tokens * r.TopK;
            bool wanted = expertIds != null || expertWeights != null;
            if ((ulong)slotCount != (wanted ? (ulong)slots : 0))
            {
                throw new ArgumentException(wanted
                    ? $"slot_count is {slotCount}; {tokens} tokens × k = {r.TopK} slots need {slots}"
                    : $"slot_count is {slotCount} but expert_ids and expert_weights are both NULL; pass 0");
            }
            Span<float> ys = CheckOutput(m, tokens, xs, yBase, y, yCount);
            using (s.Enter())
            {
                // Routing and the forward in one call: on a GPU, one upload and one synchronisation.
                bool staged = Staged(yBase, y);
                Span<float> sum = staged ? s.Stage(new ReadOnlySpan<float>(yBase, ys.Length)) : ys;
                s.Session.Forward(m, r, xs, s.Decision, sum);
                if (staged)
                {
                    sum.CopyTo(ys);
                }
                if (expertIds != null)
                {
                    s.Decision.ExpertIds.CopyTo(new Span<int>(expertIds, (int)slots));
                }
                if (expertWeights != null)
                {
                    s.Decision.Weights.CopyTo(new Span<float>(expertWeights, (int)slots));
                }
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    [UnmanagedCallersOnly(EntryPoint = EntryPointPrefix + nameof(ForwardAssigned))]
    public static int ForwardAssigned(nint session, nint module, int* expertIds, float* expertWeights, nuint slotCount,
        int topK, float* x, nuint xCount, float* yBase, float* y, nuint yCount)
    {
        try
        {
            SessionHandle s = Handles.Get<SessionHandle>(session, "session");
            AdaptedModule m = Handles.Get<AdaptedModule>(module, "module");
            ReadOnlySpan<int> ids = Input(expertIds, slotCount, "expert_ids");
            ReadOnlySpan<float> weights = Input(expertWeights, slotCount, "expert_weights");
            ReadOnlySpan<float> xs = Input(x, xCount, "x");
            int tokens = Rows(m, xCount);
            if (topK < 1)
            {
                throw new ArgumentException($"top_k is {topK}; it must be at least 1");
            }
            if ((ulong)slotCount != (ulong)tokens * (ulong)topK)
            {
                throw new ArgumentException($"slot_count is {slotCount}; {tokens} rows of x × top_k = {topK} need {(long)tokens * topK}");
            }
            Span<float> ys = CheckOutput(m, tokens, xs, yBase, y, yCount);
            using (s.Enter())
            {
                s.Decision.Assign(ids, weights, topK, m.ExpertCount);
                bool staged = Staged(yBase, y);
                Span<float> sum = staged ? s.Stage(new ReadOnlySpan<float>(yBase, ys.Length)) : ys;
                s.Session.Forward(m, s.Decision, xs, sum);
                if (staged)
                {
                    sum.CopyTo(ys);
                }
            }
            return 0;
        }
        catch (Exception e)
        {
            return Errors.Report(e);
        }
    }

    /// <summary>The managed backend of a moe_backend value; a number outside the enum is an invalid argument.</summary>
    private static Backend ToManaged(int value) =>
        (uint)value < (uint)Backends.Length
            ? Backends[value]
            : throw new ArgumentException($"backend is {value}; use a moe_backend value (0 to {Backends.Length - 1})");

    /// <summary>moe_weight_precision values, by number.</summary>
    private static readonly WeightPrecision[] Precisions = [WeightPrecision.Float32, WeightPrecision.Float16, WeightPrecision.BFloat16];

    /// <summary>The managed precision of a moe_weight_precision value; a number outside the enum is an invalid argument.</summary>
    private static WeightPrecision ToPrecision(int value) =>
        (uint)value < (uint)Precisions.Length
            ? Precisions[value]
            : throw new ArgumentException($"weight_precision is {value}; use a moe_weight_precision value (0 to {Precisions.Length - 1})");

    /// <summary>Checks y against the module, x and base; nothing has been written when it throws.</summary>
    private static Span<float> CheckOutput(AdaptedModule m, int tokens, ReadOnlySpan<float> xs, float* yBase, float* y, nuint yCount)
    {
        long needed = (long)tokens * m.OutputDim;
        if ((ulong)yCount != (ulong)needed)
        {
            throw new ArgumentException($"y_count is {yCount}; {tokens} rows of d_out = {m.OutputDim} for module '{m.Name}' need {needed}");
        }
        Span<float> ys = Output(y, yCount, "y");
        if (xs.Overlaps(ys))
        {
            throw new ArgumentException("x and y overlap; y must be a separate buffer");
        }
        if (Staged(yBase, y) && new ReadOnlySpan<float>(yBase, ys.Length).Overlaps(ys))
        {
            throw new ArgumentException("base partly overlaps y; pass base == y to add in place, or separate buffers");
        }
        return ys;
    }

    /// <summary>
    /// Whether the forward runs in the session's copy of base rather than in y. y itself is used when it holds
    /// the base already (base NULL or y): the engine writes its output last, after every check of its own
    /// (non-finite scores included) and every expert's factors are at hand, so a failed call leaves it as it
    /// was. A separate base is copied into the session's buffer, not into y, for the same reason; y receives
    /// the sum only once the forward has succeeded.
    /// </summary>
    private static bool Staged(float* yBase, float* y) => yBase != null && yBase != y;

    private static int Rows(AdaptedModule m, nuint xCount) =>
        xCount % (nuint)m.InputDim == 0
            ? (int)(xCount / (nuint)m.InputDim)
            : throw new ArgumentException($"x_count is {xCount}, not a whole number of rows of d_in = {m.InputDim} for module '{m.Name}'");

    private static ReadOnlySpan<T> Input<T>(T* data, nuint count, string name) where T : unmanaged => Output(data, count, name);

    private static Span<T> Output<T>(T* data, nuint count, string name) where T : unmanaged
    {
        if (count > int.MaxValue)
        {
            throw new ArgumentException($"{name} has {count} elements, more than one call accepts ({int.MaxValue})");
        }
        if (data == null && count != 0)
        {
            throw new ArgumentException($"{name} is NULL but its count is {count}");
        }
        return new Span<T>(data, (int)count);
    }

    private static string Utf8(byte* text, string name) =>
        text == null ? throw new ArgumentException($"{name} is NULL") : Marshal.PtrToStringUTF8((nint)text)!;

    private static string[] Strings(byte** list, nuint count, string name)
    {
        ReadOnlySpan<nint> pointers = Input((nint*)list, count, name);
        var strings = new string[pointers.Length];
        for (int i = 0; i < strings.Length; i++)
        {
            strings[i] = Utf8((byte*)pointers[i], $"{name}[{i}]");
        }
        return strings;
    }

    /// <summary>count strings, where a NULL entry stays null.</summary>
    private static string?[] OptionalStrings(byte** list, nuint count, string name)
    {
        ReadOnlySpan<nint> pointers = Input((nint*)list, count, name);
        var strings = new string?[pointers.Length];
        for (int i = 0; i < strings.Length; i++)
        {
            strings[i] = pointers[i] == 0 ? null : Marshal.PtrToStringUTF8(pointers[i]);
        }
        return strings;
    }

    /// <summary>A library's warnings on stderr, a line each (libmoerging.so adds the prefix moerging.h promises).</summary>
    private static void WriteWarnings(IReadOnlyList<string> warnings)
    {
        foreach (string warning in warnings)
        {
            // A path with a line break must not start a line without the prefix.
            byte[] utf8 = Encoding.UTF8.GetBytes(warning.ReplaceLineEndings(" "));
            fixed (byte* p = utf8)
            {
                _writeWarning(p, (nuint)utf8.Length);
            }
        }
    }

    private static void ClearOut(nint* handle, string name)
    {
        if (handle == null)
        {
            throw new ArgumentException($"{name} (the out-parameter) is NULL");
        }
        *handle = 0;
    }

    /// <summary>snprintf-style: at most capacity - 1 bytes and a NUL; *length gets the full UTF-8 length.</summary>
    private static void CopyString(string value, byte* buffer, nuint capacity, nuint* length)
    {
        if (buffer == null && capacity != 0)
        {
            throw new ArgumentException($"buffer is NULL but capacity is {capacity}");
        }
        byte[] utf8 = Encoding.UTF8.GetBytes(value);
        if (capacity > 0)
        {
            int copied = (int)Math.Min((ulong)utf8.Length, (ulong)capacity - 1);
            utf8.AsSpan(0, copied).CopyTo(new Span<byte>(buffer, copied));
            buffer[copied] = 0;
        }
        if (length != null)
        {
            *length = (nuint)utf8.Length;
        }
    }
}

/// <summary>moe_engine_options, as libmoerging.so hands it over (always the full current size).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct NativeEngineOptions
{
    public uint StructSize;
    public int Backend;
    public int CpuThreads;
    public int WeightPrecision;
}

/// <summary>moe_library_options.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct NativeLibraryOptions
{
    public uint StructSize;
    public byte** Names;
    public int Strict;
    public int Lazy;
    public int Quiet;
    public int WeightPrecision;
}

/// <summary>moe_arrow_options; a zero field stands for the library's default.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct NativeArrowOptions
{
    public uint StructSize;
    public int TopK;
    public float Temperature;
}

/// <summary>moe_routing_options.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct NativeRoutingOptions
{
    public uint StructSize;
    public int TopK;
    public float Temperature;

    /// <summary>The managed options; top_k 0 stands for the router's own default.</summary>
    internal readonly RoutingOptions ToManaged(int defaultTopK) => new(TopK == 0 ? defaultTopK : TopK, Temperature);
}

/// <summary>moe_linear_router_options.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct NativeLinearRouterOptions
{
    public uint StructSize;
    public int TopK;
    public float Temperature;
    public int Normalization;
    public int ScoreFunction;
    public float* Bias;
    public nuint BiasCount;
}
