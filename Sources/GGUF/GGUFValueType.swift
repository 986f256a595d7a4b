/// A GGUF metadata value type: the `uint32` written before every value (and before an array's
/// elements), as in gguf-py's `GGUFValueType` and ggml's `enum gguf_type`.
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// The name gguf-py gives it ("UINT8", "STRING", "ARRAY").
    public var name: String { String(describing: self).uppercased() }

    /// The fewest bytes a value of this type takes in the file: its size for fixed-size types, the
    /// 8-byte length of a string, the 4-byte element type and 8-byte count of an array. Used to
    /// refuse counts larger than the rest of the file before allocating for them.
    var minimumSize: Int {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64, .string: return 8
        case .array: return 12
        }
    }
}
