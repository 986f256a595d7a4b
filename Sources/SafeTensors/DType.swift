/// A safetensors element type. Raw values are the on-disk names.
///
/// Case order is the reference implementation's enum order ("increasing alignment"); the writer
/// orders tensors by descending `alignmentRank`, then by name bytes, as Python's `save_file` does.
public enum DType: String, CaseIterable, Sendable, Codable {
    case bool = "BOOL"
    case float4 = "F4"
    case float6E2M3 = "F6_E2M3"
    case float6E3M2 = "F6_E3M2"
    case uint8 = "U8"
    case int8 = "I8"
    case float8E5M2 = "F8_E5M2"
    case float8E4M3 = "F8_E4M3"
    case float8E8M0 = "F8_E8M0"
    case float8E4M3FNUZ = "F8_E4M3FNUZ"
    case float8E5M2FNUZ = "F8_E5M2FNUZ"
    case int16 = "I16"
    case uint16 = "U16"
    case float16 = "F16"
    case bfloat16 = "BF16"
    case int32 = "I32"
    case uint32 = "U32"
    case float32 = "F32"
    case complex64 = "C64"
    case float64 = "F64"
    case int64 = "I64"
    case uint64 = "U64"

    /// Bits per element (4 for F4, 6 for the F6 types).
    public var bitSize: Int {
        switch self {
        case .float4: return 4
        case .float6E2M3, .float6E3M2: return 6
        case .bool, .uint8, .int8, .float8E5M2, .float8E4M3, .float8E8M0, .float8E4M3FNUZ, .float8E5M2FNUZ: return 8
        case .int16, .uint16, .float16, .bfloat16: return 16
        case .int32, .uint32, .float32: return 32
        case .complex64, .float64, .int64, .uint64: return 64
        }
    }

    /// Position in the reference enum; larger sorts first when writing.
    public var alignmentRank: Int { DType.allCases.firstIndex(of: self)! }

    /// True for the floating-point types a merge can compute in (F16, BF16, F32, F64).
    public var isMergeable: Bool { self == .float16 || self == .bfloat16 || self == .float32 || self == .float64 }
}
