using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;

namespace MoErging.Kernels;

/// <summary>One kernel variant's compiled code: its report name (<c>shrink_f16_bf16</c>: family, step, then the storage of activations and weights) and text.</summary>
/// <param name="Name">Family and step (<c>gating_scores</c>, <c>gating_select</c>, <c>shrink</c>, <c>expand</c>), then the storage variant.</param>
/// <param name="Method">The kernel method, as C# names it.</param>
/// <param name="Code">The PTX.</param>
public sealed record CompiledKernel(string Name, string Method, string Code);

/// <summary>
/// The kernels' CUDA code, read without a device: ILGPU's PTX backend compiles every variant the CUDA
/// accelerator loads (warp reductions, hardware F16 conversions) for an architecture and a PTX ISA, the
/// same code a CUDA device would be given (the ISA only labels it: CUDA 11.8's <c>ptxas</c> reads 7.8).
/// </summary>
public static class KernelCode
{
    /// <summary>The PTX of every CUDA kernel variant, for <c>sm_90</c> and ISA 7.8 unless told otherwise.</summary>
    public static IReadOnlyList<CompiledKernel> Ptx(CudaArchitecture? architecture = null, CudaInstructionSet? instructionSet = null)
    {
        CudaArchitecture arch = architecture ?? CudaArchitecture.SM_90;
        using Context context = Context.Create(b => b.CPU().EnableAlgorithms().Optimize(Devices.Level));
        var backend = new PTXBackend(context, new CudaCapabilityContext(arch), arch, instructionSet ?? CudaInstructionSet.ISA_78, null);
        var compiled = new List<CompiledKernel>();
        foreach (MethodInfo method in KernelSet.EntryPoints(warps: true))
        {
            var kernel = (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(method), KernelSpecialization.Empty);
            compiled.Add(new CompiledKernel(ReportName(method), KernelLoader.Name(method), kernel.PTXAssembly));
        }
        return compiled;
    }

    /// <summary>The report name of a kernel method: its family and step, then f32, f16 or bf16 for each storage it is generic over.</summary>
    internal static string ReportName(MethodInfo method)
    {
        string family = method.DeclaringType?.Name switch
        {
            nameof(GatingKernel) => method.Name == "Scores" ? "gating_scores" : "gating_select",
            nameof(ShrinkKernel) => "shrink",
            nameof(ExpandKernel) => "expand",
            string other => other.ToLowerInvariant(),
            null => method.Name.ToLowerInvariant(),
        };
        IEnumerable<string> storage = method.IsGenericMethod
            // Storages hold float, ushort or BFloat16Bits elements; asking for those keeps this free of interface reflection, which trimming cannot see.
            ? method.GetGenericArguments()
                .Where(t => t.IsAssignableTo(typeof(IStorage<float>)) || t.IsAssignableTo(typeof(IStorage<ushort>)) || t.IsAssignableTo(typeof(IStorage<BFloat16Bits>)))
                .Select(t => t == typeof(F32) ? "f32" : t == typeof(BF16) ? "bf16" : "f16")
            : [];
        return string.Join("_", [family, .. storage]);
    }
}
