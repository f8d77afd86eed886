using System.Reflection;
using System.Text;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Runtime;
using ILGPU.Runtime.OpenCL;

namespace MoErging.Kernels;

/// <summary>The kernel families of one accelerator, compiled when the device opens and then reused.</summary>
public sealed class KernelSet
{
    /// <summary>Shared memory the largest kernel declares (the shrink's slot list, scan and reduction tree).</summary>
    public const int SharedBytes = ShrinkKernel.SharedBytes;

    internal KernelSet(Accelerator accelerator)
    {
        if (accelerator.MaxSharedMemoryPerGroup < SharedBytes)
        {
            throw new NotSupportedException(
                $"the kernels need {SharedBytes / 1024} KiB of shared (local) memory per group; '{accelerator.Name}' has {accelerator.MaxSharedMemoryPerGroup / 1024} KiB");
        }
        WarpReductions = TeamShape.UsesWarps(accelerator);
        Gating = new GatingKernel(accelerator, WarpReductions);
        Shrink = new ShrinkKernel(accelerator, WarpReductions);
        Expand = new ExpandKernel(accelerator, WarpReductions);
        Shape = new LaunchShape(Gating.ScoresGroupSize, Gating.SelectGroupSize, Shrink.GroupSize, Shrink.RowsPerGroup, Expand.GroupSize);
    }

    /// <summary>Scores, top-k and weights.</summary>
    public GatingKernel Gating { get; }

    /// <summary>V = c · A_e x per contributing slot, grouping by expert inside.</summary>
    public ShrinkKernel Shrink { get; }

    /// <summary>y += Σ w s B v.</summary>
    public ExpandKernel Expand { get; }

    /// <summary>The group sizes the kernels run with here, which plan every launch.</summary>
    public LaunchShape Shape { get; }

    /// <summary>True where the kernels reduce with warp shuffles; false on the portable path (group reductions in shared memory).</summary>
    public bool WarpReductions { get; }

    /// <summary>How the kernels run here, for reports: the reduction variant and the group sizes.</summary>
    public string Layout =>
        $"{(WarpReductions ? "warp" : "work-group")} reductions; groups of {Gating.ScoresGroupSize} (scores), {Gating.SelectGroupSize} (select), " +
        $"{Shrink.GroupSize} (shrink), {Expand.GroupSize} (expand) threads";

    /// <summary>Every kernel method an accelerator loads, with warp reductions and hardware F16 conversions (CUDA) or without (OpenCL), for reading the compiled code.</summary>
    internal static IEnumerable<MethodInfo> EntryPoints(bool warps) =>
        [.. GatingKernel.EntryPoints(warps), .. ShrinkKernel.EntryPoints(warps), .. ExpandKernel.EntryPoints(warps)];
}

/// <summary>A kernel the device's compiler or ILGPU's code generator refused; the message carries the driver's own words.</summary>
public sealed class KernelCompilationException(string message, Exception inner) : Exception(message, inner);

/// <summary>Loads explicitly grouped kernels, turning a refusal into a message that says which kernel, which error and what the driver logged.</summary>
internal static class KernelLoader
{
    private const int LogLines = 12;

    /// <summary>
    /// Loads a kernel and says how many threads per group it may run with: on OpenCL the kernel's own limit
    /// (CL_KERNEL_WORK_GROUP_SIZE), which its register use or a driver's default (AMD's is 256) can set below
    /// the device's; elsewhere the device's.
    /// </summary>
    public static Action<AcceleratorStream, KernelConfig, TArgs> Load<TArgs>(Accelerator accelerator, Action<TArgs> kernel, out int maxGroupSize)
        where TArgs : struct
    {
        try
        {
            Kernel loaded = accelerator.LoadKernel(kernel.Method);
            maxGroupSize = accelerator is CLAccelerator ? accelerator.EstimateGroupSize(loaded) : accelerator.MaxNumThreadsPerGroup;
            var launch = loaded.CreateLauncherDelegate<Action<AcceleratorStream, KernelConfig, TArgs>>();
            if (accelerator is not CLAccelerator)
            {
                return launch;
            }
            // An OpenCL kernel object holds its arguments between clSetKernelArg and the enqueue, and is not
            // thread-safe: two sessions launching it at once could swap arguments. The sessions of a device share
            // its kernels, so each launch takes the kernel's lock (held only while enqueueing, never while it runs).
            var gate = new object();
            return (stream, config, args) =>
            {
                lock (gate)
                {
                    launch(stream, config, args);
                }
            };
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new KernelCompilationException(Describe(accelerator, kernel.Method, e), e);
        }
    }

    /// <summary>Loads one of a kernel's variants, lowering <paramref name="limit"/> to its threads per group: a launcher sizes its groups for all of them.</summary>
    public static Action<AcceleratorStream, KernelConfig, TArgs> LoadVariant<TArgs>(Accelerator accelerator, Action<TArgs> kernel, ref int limit)
        where TArgs : struct
    {
        Action<AcceleratorStream, KernelConfig, TArgs> launch = Load(accelerator, kernel, out int maxGroupSize);
        limit = Math.Min(limit, maxGroupSize);
        return launch;
    }

    /// <summary>A kernel method as C# would name it, for example <c>GatingKernel.Kernel&lt;Single, F32, GroupTeam&gt;</c>.</summary>
    public static string Name(MethodInfo method)
    {
        string arguments = method.IsGenericMethod ? $"<{string.Join(", ", method.GetGenericArguments().Select(t => t.Name))}>" : "";
        return $"{method.DeclaringType?.Name}.{method.Name}{arguments}";
    }

    private static string Describe(Accelerator accelerator, MethodInfo method, Exception e)
    {
        var message = new StringBuilder($"kernel {Name(method)} did not compile on '{accelerator.Name}': ");
        if (e is CLException cl)
        {
            message.Append($"the OpenCL driver answered {cl.Error} ({(int)cl.Error})");
            if (accelerator is CLAccelerator device && BuildLog(device, method) is string log)
            {
                message.Append("; its build log begins: ").Append(log);
            }
        }
        else
        {
            message.Append(e.Message);
            for (Exception? inner = e.InnerException; inner is not null; inner = inner.InnerException)
            {
                message.Append(" (").Append(inner.Message).Append(')');
            }
        }
        return message.ToString();
    }

    /// <summary>Compiles the kernel's OpenCL C again, outside ILGPU's loader (which writes the log to Trace only), to read the driver's build log.</summary>
    private static string? BuildLog(CLAccelerator accelerator, MethodInfo method)
    {
        try
        {
            var compiled = (CLCompiledKernel)accelerator.Backend.Compile(
                EntryPointDescription.FromExplicitlyGroupedKernel(method), KernelSpecialization.Empty);
            CLError error = CLKernel.LoadKernel(accelerator, compiled.Name, compiled.Source, compiled.CVersion,
                out IntPtr program, out IntPtr kernel, out string? log);
            if (error == CLError.CL_SUCCESS)
            {
                CLAPI.CurrentAPI.ReleaseKernel(kernel);
                CLAPI.CurrentAPI.ReleaseProgram(program);
                return null;
            }
            if (string.IsNullOrWhiteSpace(log))
            {
                return null;
            }
            string[] lines = log.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return string.Join(" | ", lines.Take(LogLines)) + (lines.Length > LogLines ? $" | ... ({lines.Length - LogLines} more lines)" : "");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return null;
        }
    }
}
