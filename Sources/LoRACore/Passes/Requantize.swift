import Foundation
import LoRAKernels
import SafeTensors

/// What `merge --requantize` reports, and the quant_state JSON it writes (`Requantize4bitPass`).
public enum Requantize {
    /// How much of one module's intended change the 4-bit codes kept.
    public struct Survival: Sendable {
        public var weight: String
        /// Fraction of 4-bit codes that changed.
        public var codesChanged: Double
        /// Cosine of the stored delta dequant(requant(W')) − dequant(W) with the intended W' − dequant(W).
        public var deltaCorrelation: Double
        /// ‖stored delta‖ / ‖intended delta‖.
        public var deltaNormRatio: Double
    }

    /// The quant_state JSON with the new nested_offset, in Python's `json.dumps` layout.
    static func stateJSON(_ stored: [UInt8], name: String, offset: Float?) throws -> [UInt8] {
        try stateJSON(stored, name: name, offsetText: offset.map { "\(Double($0))" })
    }

    /// Characters the longest fp64 `repr` takes (`-2.2250738585072014e-308`).
    static let offsetWidth = 24

    /// Bytes of the quant_state JSON `paddedStateJSON` writes for `stored`, whatever the offset:
    /// known before the weight is merged, so the file header can be laid out first.
    static func paddedStateLength(_ stored: [UInt8], name: String) throws -> Int {
        try stateJSON(stored, name: name, offsetText: String(repeating: "0", count: offsetWidth)).count
    }

    /// The quant_state JSON with the new nested_offset, then spaces up to `paddedStateLength`
    /// (JSON allows whitespace after the value; `json.loads`, which bitsandbytes' unpacking
    /// uses, reads the same object as from `json.dumps`' bytes).
    static func paddedStateJSON(_ stored: [UInt8], name: String, offset: Float) throws -> [UInt8] {
        let json = try stateJSON(stored, name: name, offset: offset)
        let length = try paddedStateLength(stored, name: name)
        precondition(json.count <= length, "an fp64 repr is at most offsetWidth characters")
        return json + [UInt8](repeating: 0x20, count: length - json.count)
    }

    private static func stateJSON(_ stored: [UInt8], name: String, offsetText: String?) throws -> [UInt8] {
        guard case let .object(members)? = try? JSONParser.parse(stored) else {
            throw LoRACoreError.invalidModule(module: name, detail: "quant_state is not a JSON object")
        }
        let parts = members.map { kv -> String in
            let value: String
            if kv.key == "nested_offset", let offsetText { value = offsetText } else { value = compact(kv.value) }
            return JSONWriter.pythonString(kv.key) + ": " + value
        }
        return Array(("{" + parts.joined(separator: ", ") + "}").utf8)
    }

    private static func compact(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .number(n): return n
        case let .string(s): return JSONWriter.pythonString(s)
        case let .array(a): return "[" + a.map(compact).joined(separator: ", ") + "]"
        case let .object(m): return "{" + m.map { JSONWriter.pythonString($0.key) + ": " + compact($0.value) }.joined(separator: ", ") + "}"
        }
    }
}

extension Requantize.Survival {
    /// Sums over the parts of one weight, added in the order given (the same on every run): codes
    /// changed, Σ intended·stored, Σ intended², Σ stored² (the deltas from the base's own values).
    init(weight: String, elements: Int, sums: [(changed: Int, dot: Double, want: Double, got: Double)]) {
        var changed = 0, dot = 0.0, want = 0.0, got = 0.0
        for s in sums {
            changed += s.changed
            dot += s.dot
            want += s.want
            got += s.got
        }
        self.init(weight: weight, codesChanged: Double(changed) / Double(elements), deltaCorrelation: want > 0 && got > 0 ? dot / (want * got).squareRoot() : 0,
                  deltaNormRatio: want > 0 ? (got / want).squareRoot() : 0)
    }
}
