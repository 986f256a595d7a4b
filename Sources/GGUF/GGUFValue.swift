/// One metadata value. Integers keep their signedness and width, floats their bits. Not `indirect`:
/// an array's elements live in its own buffer, so a scalar element costs `MemoryLayout<GGUFValue>.stride`
/// bytes and no allocation of its own.
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    /// An array: its element type as written, and the elements (arrays may nest).
    case array(GGUFValueType, [GGUFValue])

    /// The value's type.
    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .uint64: return .uint64
        case .int64: return .int64
        case .float32: return .float32
        case .float64: return .float64
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        }
    }

    /// Any integer type as Int64 when it fits; nil otherwise.
    public var integer: Int64? {
        switch self {
        case let .uint8(v): return Int64(v)
        case let .int8(v): return Int64(v)
        case let .uint16(v): return Int64(v)
        case let .int16(v): return Int64(v)
        case let .uint32(v): return Int64(v)
        case let .int32(v): return Int64(v)
        case let .uint64(v): return Int64(exactly: v)
        case let .int64(v): return v
        default: return nil
        }
    }

    /// The string, or nil for other types.
    public var string: String? {
        if case let .string(s) = self { return s }
        return nil
    }

    /// A short human rendering: scalars as they are, strings quoted, arrays as
    /// `[TYPE × count]` (tokenizer vocabularies have 100k entries).
    public var summary: String {
        switch self {
        case let .uint8(v): return "\(v)"
        case let .int8(v): return "\(v)"
        case let .uint16(v): return "\(v)"
        case let .int16(v): return "\(v)"
        case let .uint32(v): return "\(v)"
        case let .int32(v): return "\(v)"
        case let .uint64(v): return "\(v)"
        case let .int64(v): return "\(v)"
        case let .float32(v): return "\(v)"
        case let .float64(v): return "\(v)"
        case let .bool(v): return v ? "true" : "false"
        case let .string(s): return "\"\(s)\""
        case let .array(t, items): return "[\(t.name) × \(items.count)]"
        }
    }
}
