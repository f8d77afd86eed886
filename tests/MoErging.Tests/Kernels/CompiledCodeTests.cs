using System.Reflection;
using System.Text.RegularExpressions;
using Group = ILGPU.Group;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.OpenCL;
using MoErging.Kernels;

namespace MoErging.Tests.Kernels;

/// <summary>
/// The code ILGPU generates for every kernel variant, read without a device: ILGPU's own backends compile the
/// kernels to OpenCL C (for a device with nothing beyond OpenCL 3.0 core: no fp64, fp16, generic address space
/// or sub-groups) and to PTX for sm_90, and the text is checked for what a driver would refuse or run slowly.
/// </summary>
public sealed partial class CompiledCodeTests
{
    public static TheoryData<string> PortableKernels() => new(KernelSet.EntryPoints(warps: false).Select(KernelLoader.Name));

    public static TheoryData<string> WarpKernels() => new(KernelSet.EntryPoints(warps: true).Select(KernelLoader.Name));

    [Theory]
    [MemberData(nameof(PortableKernels))]
    public void PortableKernelsNeedNothingBeyondOpenCLCore(string kernel)
    {
        using Context context = Context.Create(b => b.CPU().EnableAlgorithms().Optimize(OptimizationLevel.O2));
        var backend = new CLBackend(context, new CLCapabilityContext(float16: false, float64: false, genericAddressSpace: false, int64_Atomics: false, subGroups: false),
            CLDeviceVendor.Other, CLCVersion.CL30);
        var compiled = (CLCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(Method(kernel, warps: false)), KernelSpecialization.Empty);
        string source = compiled.Source;
        // Each of these is missing on rusticl, PoCL or NVIDIA's OpenCL, or needs generic address space.
        foreach (string construct in new[] { "double", "__generic", "atomic_", "sub_group", "work_group_scan", "work_group_reduce", "work_group_broadcast", "intel_", "dynamic_shared_memory" })
        {
            Assert.False(source.Contains(construct, StringComparison.Ordinal), $"{kernel}: the OpenCL C contains '{construct}'");
        }
        // File-scope local variables: OpenCL C 1.2 requires program-scope variables to be constant.
        Assert.False(FileScopeLocal().IsMatch(source), $"{kernel}: the OpenCL C declares a program-scope local variable");
    }

    /// <summary>Every CUDA variant, compiled once for the tests below (the code <c>moerge</c>'s ptx command writes).</summary>
    private static readonly Lazy<IReadOnlyList<CompiledKernel>> Ptx = new(() => KernelCode.Ptx());

    [Theory]
    [MemberData(nameof(WarpKernels))]
    public void CudaKernelsHaveNoDoublePrecisionInstruction(string kernel)
    {
        string ptx = Ptx.Value.Single(k => k.Method == kernel).Code;
        Assert.Contains(".entry", ptx);
        Assert.False(ptx.Contains(".f64", StringComparison.Ordinal), $"{kernel}: the PTX has a double-precision instruction or register");
    }

    /// <summary>
    /// No kernel declares local memory (a per-thread stack in DRAM): every value stays in registers, the storage structs
    /// (<see cref="Float8"/>, the 16-byte units, <see cref="BFloat16Bits"/>) included.
    /// </summary>
    [Theory]
    [MemberData(nameof(WarpKernels))]
    public void CudaKernelsUseNoLocalMemory(string kernel)
    {
        string ptx = Ptx.Value.Single(k => k.Method == kernel).Code;
        Assert.False(LocalMemory().IsMatch(ptx), $"{kernel}: the PTX declares or accesses local memory");
    }

    /// <summary>The bulk kernels read their rows with 128-bit loads (ILGPU emits them only where it knows the alignment).</summary>
    [Fact]
    public void BulkCudaKernelsUse128BitGlobalLoads()
    {
        foreach (CompiledKernel kernel in Ptx.Value.Where(k => k.Name != "gating_select"))
        {
            Assert.True(Vector128Load().IsMatch(kernel.Code), $"{kernel.Name} ({kernel.Method}): no ld.global.v4 in its PTX");
        }
        Assert.Equal(["expand", "gating_scores", "gating_select", "shrink"], Ptx.Value.Select(k => k.Name.Split('_')[0] == "gating" ? string.Join('_', k.Name.Split('_').Take(2)) : k.Name.Split('_')[0]).Distinct().Order());
    }

    /// <summary>
    /// ILGPU 1.5.3 opens no OpenCL device that lacks generic address space support, and its flag has an internal
    /// setter the engine sets (see GenericAddressSpace in Devices.cs). If a new ILGPU version renames or removes the
    /// setter, or stops refusing such devices, this fails and says which.
    /// </summary>
    [Fact]
    public void IlgpuStillGatesOpenCLOnGenericAddressSpaceThroughAnInternalSetter()
    {
        PropertyInfo? flag = typeof(CLCapabilityContext).GetProperty(nameof(CLCapabilityContext.GenericAddressSpace));
        Assert.True(flag is not null, "CLCapabilityContext.GenericAddressSpace is gone: revisit GenericAddressSpace.Allow in Devices.cs");
        Assert.True(flag.GetSetMethod(nonPublic: true) is { IsPublic: false },
            "CLCapabilityContext.GenericAddressSpace has no internal setter any more: revisit GenericAddressSpace.Allow in Devices.cs");
        // The version whose CLAccelerator constructor was read; a new one needs reading again.
        Assert.Equal(new Version(1, 5, 3, 0), typeof(CLAccelerator).Assembly.GetName().Version);

        // Where an OpenCL driver without generic address space is present, ILGPU itself still refuses it.
        using Context all = Context.Create(b => b.OpenCL(_ => true));
        CLDevice? plain = null;
        foreach (CLDevice device in all.GetCLDevices())
        {
            plain ??= device.Capabilities.GenericAddressSpace ? null : device;
        }
        if (plain is null)
        {
            return; // no such driver here; the OpenCL test classes then skip (or fail in CI) on their own
        }
        Assert.Throws<CapabilityNotSupportedException>(() => plain.CreateCLAccelerator(all).Dispose());
    }

    /// <summary>A driver's refusal reaches the user with the kernel's name, the driver's error code and its build log.</summary>
    [Fact]
    public void ADriverRefusalCarriesTheErrorCodeAndTheBuildLog()
    {
        using GpuDevice device = SharedDevices.Hold(TestDevice.Rusticl);
        var e = Assert.Throws<KernelCompilationException>(() => KernelLoader.Load<ArrayView<int>>(device.Accelerator, UsesDynamicSharedMemory, out _));
        Assert.Contains("UsesDynamicSharedMemory", e.Message);
        Assert.Contains("CL_BUILD_PROGRAM_FAILURE", e.Message);
        Assert.Contains("build log", e.Message);
        Assert.Contains("program scope", e.Message); // the driver's own words: dynamic shared memory is a file-scope local
        Assert.NotNull(e.InnerException);
    }

    private static void UsesDynamicSharedMemory(ArrayView<int> output)
    {
        ArrayView<int> shared = SharedMemory.GetDynamic<int>();
        shared[Group.IdxX] = Group.IdxX;
        Group.Barrier();
        output[Grid.GlobalIndex.X] = shared[0];
    }

    private static MethodInfo Method(string name, bool warps) => KernelSet.EntryPoints(warps).First(m => KernelLoader.Name(m) == name);

    [GeneratedRegex(@"^local\s", RegexOptions.Multiline)]
    private static partial Regex FileScopeLocal();

    [GeneratedRegex(@"\bld\.global(\.nc)?\.v4\.")]
    private static partial Regex Vector128Load();

    [GeneratedRegex(@"\.local\b")]
    private static partial Regex LocalMemory();
}

/// <summary>
/// The launches a forward makes on a CUDA device, as planned by the functions the launchers size their grids with:
/// at decode (W1, T = 64) a routed forward is at most three launches and a host-assigned one (W3) needs no gating;
/// every bulk launch at W1 T = 64 and W2 T = 4,096 fills an H100's 132 SMs; routing alone is the scores and the selection.
/// </summary>
public sealed class LaunchPlanTests
{
    private static readonly LaunchShape Cuda = LaunchShape.Cuda();

    [Fact]
    public void DecodeIsThreeLaunchesAndAssignedExpertsTwo()
    {
        IReadOnlyList<PlannedLaunch> w1 = Cuda.Forward(64, 64, 2, 16, 4096, routed: true);
        Assert.Equal(["gating_scores", "shrink", "expand"], w1.Select(l => l.Kernel));
        IReadOnlyList<PlannedLaunch> w3 = Cuda.Forward(64, 64, 1, 16, 4096, routed: false);
        Assert.Equal(["shrink", "expand"], w3.Select(l => l.Kernel));
        Assert.Equal(["gating_scores", "gating_select"], Cuda.Route(64, 64, 2).Select(l => l.Kernel));
        // Past the fused selection's budget the selection is a launch of its own, before the shrink.
        Assert.Equal(["gating_scores", "gating_select", "shrink", "expand"], Cuda.Forward(4096, 64, 2, 16, 4096, routed: true).Select(l => l.Kernel));
    }

    [Theory]
    [InlineData(64)]
    [InlineData(4096)]
    public void EveryBulkLaunchFillsAnH100(int tokens)
    {
        foreach (PlannedLaunch launch in Cuda.Forward(tokens, 64, 2, 16, 4096, routed: true).Where(l => l.Bulk))
        {
            Assert.True(launch.Groups >= 132, $"T = {tokens}: {launch.Kernel} launches {launch.Groups} groups");
        }
    }
}
