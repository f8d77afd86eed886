namespace MoErging.Formats;

/// <summary>Element types of the safetensors format, with their names as written in headers.</summary>
public enum TensorDType
{
    /// <summary>A boolean, one byte ("BOOL").</summary>
    Bool,
    /// <summary>An unsigned 8-bit integer ("U8").</summary>
    U8,
    /// <summary>A signed 8-bit integer ("I8").</summary>
    I8,
    /// <summary>An 8-bit float with 5 exponent and 2 mantissa bits ("F8_E5M2").</summary>
    F8E5M2,
    /// <summary>An 8-bit float with 4 exponent and 3 mantissa bits ("F8_E4M3").</summary>
    F8E4M3,
    /// <summary>A signed 16-bit integer ("I16").</summary>
    I16,
    /// <summary>An unsigned 16-bit integer ("U16").</summary>
    U16,
    /// <summary>An IEEE 754 half-precision float ("F16").</summary>
    F16,
    /// <summary>A bfloat16: the upper 16 bits of a float32 ("BF16").</summary>
    BF16,
    /// <summary>A signed 32-bit integer ("I32").</summary>
    I32,
    /// <summary>An unsigned 32-bit integer ("U32").</summary>
    U32,
    /// <summary>An IEEE 754 single-precision float ("F32").</summary>
    F32,
    /// <summary>An IEEE 754 double-precision float ("F64").</summary>
    F64,
    /// <summary>A signed 64-bit integer ("I64").</summary>
    I64,
    /// <summary>An unsigned 64-bit integer ("U64").</summary>
    U64,
}

/// <summary>Names and sizes of <see cref="TensorDType"/> values.</summary>
public static class TensorDTypes
{
    /// <summary>Size of one element in bytes.</summary>
    public static int SizeOf(TensorDType dtype) => dtype switch
    {
        TensorDType.Bool or TensorDType.U8 or TensorDType.I8 or TensorDType.F8E5M2 or TensorDType.F8E4M3 => 1,
        TensorDType.I16 or TensorDType.U16 or TensorDType.F16 or TensorDType.BF16 => 2,
        TensorDType.I32 or TensorDType.U32 or TensorDType.F32 => 4,
        TensorDType.F64 or TensorDType.I64 or TensorDType.U64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };

    /// <summary>The name used in safetensors headers ("F32", "BF16", ...).</summary>
    public static string Name(TensorDType dtype) => dtype switch
    {
        TensorDType.Bool => "BOOL",
        TensorDType.F8E5M2 => "F8_E5M2",
        TensorDType.F8E4M3 => "F8_E4M3",
        _ => dtype.ToString(),
    };

    /// <summary>Parses a header dtype name; false for names this reader does not know.</summary>
    public static bool TryParse(string name, out TensorDType dtype)
    {
        switch (name)
        {
            case "BOOL": dtype = TensorDType.Bool; return true;
            case "U8": dtype = TensorDType.U8; return true;
            case "I8": dtype = TensorDType.I8; return true;
            case "F8_E5M2": dtype = TensorDType.F8E5M2; return true;
            case "F8_E4M3": dtype = TensorDType.F8E4M3; return true;
            case "I16": dtype = TensorDType.I16; return true;
            case "U16": dtype = TensorDType.U16; return true;
            case "F16": dtype = TensorDType.F16; return true;
            case "BF16": dtype = TensorDType.BF16; return true;
            case "I32": dtype = TensorDType.I32; return true;
            case "U32": dtype = TensorDType.U32; return true;
            case "F32": dtype = TensorDType.F32; return true;
            case "F64": dtype = TensorDType.F64; return true;
            case "I64": dtype = TensorDType.I64; return true;
            case "U64": dtype = TensorDType.U64; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>True for the dtypes the engine decodes into float32: F32, F16 and BF16.</summary>
    public static bool IsFloatingPoint(TensorDType dtype) =>
        dtype is TensorDType.F32 or TensorDType.F16 or TensorDType.BF16;
}
