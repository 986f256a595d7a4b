/// A JSON document as parsed by `JSONParser`: object members keep their file order and numbers keep
/// their source text, so callers decide how strictly to read them (safetensors offsets must be plain
/// non-negative integers; config alphas may be floats).
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The number's literal text, already checked against the JSON grammar.
    case number(String)
    case string(String)
    case array([JSONValue])
    /// Members in file order; duplicates are rejected by the parser.
    case object([(key: String, value: JSONValue)])

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.number(a), .number(b)): return a == b
        case let (.string(a), .string(b)): return Array(a.utf8) == Array(b.utf8)
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)):
            return a.count == b.count && zip(a, b).allSatisfy { Array($0.key.utf8) == Array($1.key.utf8) && $0.value == $1.value }
        default: return false
        }
    }

    /// The member named `key` of an object (compared as UTF-8 bytes), or nil.
    public subscript(key: String) -> JSONValue? {
        guard case let .object(members) = self else { return nil }
        let bytes = Array(key.utf8)
        return members.first { Array($0.key.utf8) == bytes }?.value
    }

    /// The value as a string, if it is one.
    public var stringValue: String? { if case let .string(s) = self { return s } else { return nil } }
    /// The value as a Bool, if it is one.
    public var boolValue: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    /// The value as a Double, if it is a number.
    public var doubleValue: Double? { if case let .number(n) = self { return Double(n) } else { return nil } }
    /// The value as an exact non-negative integer: a number written without fraction or exponent that fits 64 bits.
    public var uint64Value: UInt64? {
        guard case let .number(n) = self, !n.contains(where: { $0 == "." || $0 == "e" || $0 == "E" || $0 == "-" }) else {
            return nil
        }
        return UInt64(n)
    }
    /// The value as an exact integer (may be negative), if it is written as one and fits `Int`.
    public var intValue: Int? {
        guard case let .number(n) = self, !n.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) else { return nil }
        return Int(n)
    }
    /// An object's members, if it is one.
    public var objectMembers: [(key: String, value: JSONValue)]? {
        if case let .object(m) = self { return m } else { return nil }
    }
    /// An array's elements, if it is one.
    public var arrayValue: [JSONValue]? { if case let .array(a) = self { return a } else { return nil } }
    /// A one-word description of the value's type, for error messages.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}
