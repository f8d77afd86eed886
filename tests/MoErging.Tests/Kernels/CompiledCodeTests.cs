using System.Reflection;
using System.Text.RegularExpressions;
using Group = ILGPU.Group;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
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

    [Theory]
    [MemberData(nameof(WarpKernels))]
    public void CudaKernelsHaveNoDoublePrecisionInstruction(string kernel)
    {
        using Context context = Context.Create(b => b.CPU().EnableAlgorithms().Optimize(OptimizationLevel.O2));
        var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_90), CudaArchitecture.SM_90, CudaInstructionSet.ISA_78, null);
        var compiled = (PTXCompiledKernel)backend.Compile(EntryPointDescription.FromExplicitlyGroupedKernel(Method(kernel, warps: true)), KernelSpecialization.Empty);
        string ptx = compiled.PTXAssembly;
        Assert.Contains(".entry", ptx);
        Assert.False(ptx.Contains(".f64", StringComparison.Ordinal), $"{kernel}: the PTX has a double-precision instruction or register");
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
}
