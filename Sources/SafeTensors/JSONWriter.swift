/// Writes JSON text the way the reference tools do.
///
/// `compact` matches serde_json's `to_string` (used for safetensors headers): no spaces, `/` and
/// non-ASCII kept raw, control bytes as `\u00xx` lowercase. `pretty` matches Python's
/// `json.dumps(obj, indent=2, sort_keys=...)` layout for index and config files: members as given
/// (callers sort), `ensure_ascii` escaping of non-ASCII as `\uXXXX`, as transformers writes them.
public enum JSONWriter {
    /// Appends `s` as a serde_json string literal.
    public static func appendCompactString(_ s: String, to out: inout [UInt8]) {
        out.append(0x22)
        for b in s.utf8 {
            switch b {
            case 0x22: out.append(contentsOf: [0x5C, 0x22])
            case 0x5C: out.append(contentsOf: [0x5C, 0x5C])
            case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20: out.append(contentsOf: Array("\\u00".utf8) + hex2(b))
            default: out.append(b)
            }
        }
        out.append(0x22)
    }

    private static func hex2(_ b: UInt8) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return [digits[Int(b >> 4)], digits[Int(b & 15)]]
    }

    /// Python `json.dumps` string literal with `ensure_ascii=True`.
    public static func pythonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 || scalar.value > 0x7E {
                    for unit in String(scalar).utf16 { out += "\\u" + hex4(unit) }
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    private static func hex4(_ v: UInt16) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 4 - s.count) + s
    }

    /// Python `json.dumps(value, indent: 2)` text (members in the order given).
    public static func pretty(_ value: JSONValue, indent: Int = 0) -> String {
        let pad = String(repeating: " ", count: indent + 2)
        let closePad = String(repeating: " ", count: indent)
        switch value {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .number(n): return n
        case let .string(s): return pythonString(s)
        case let .array(a):
            if a.isEmpty { return "[]" }
            return "[\n" + a.map { pad + pretty($0, indent: indent + 2) }.joined(separator: ",\n") + "\n" + closePad + "]"
        case let .object(m):
            if m.isEmpty { return "{}" }
            return "{\n" + m.map { pad + pythonString($0.key) + ": " + pretty($0.value, indent: indent + 2) }
                .joined(separator: ",\n") + "\n" + closePad + "}"
        }
    }
}
