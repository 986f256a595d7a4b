import Foundation
import LoRAKernels
import SafeTensors

/// `merge --requantize`: the merged targets written back in the base's bitsandbytes 4-bit format
/// (same quant type, block size and double quantization), the untouched 4-bit weights copied as they
/// were, and a report of how much of each module's delta survived the 4-bit step.
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

    /// Writes `output` from the 4-bit `base` and the dense merge `merged` (same tensor names).
    /// - Parameter keepDense: write the changed weights dense (compute dtype, companions dropped)
    ///   instead of requantizing them (`--keep-quantized`).
    static func write(base: Checkpoint, quantization q: BnbQuantization, merged: Checkpoint, changed: Set<String>,
                      output: AtomicOutput, keepDense: Bool = false, maxShardSize: Int = 5_000_000_000) throws -> [Survival] {
        var survival: [Survival] = []
        var produced: [String: [UInt8]] = [:]
        var infos: [TensorInfo] = []
        for name in base.names {
            let info = base.info(name)!
            guard let s = q.states[String(name)], changed.contains(name) else {
                if let suffix = BnbQuantization.companionSuffixes.first(where: { name.hasSuffix($0) }),
                   changed.contains(String(name.dropLast(suffix.count))) {
                    continue  // rewritten with its changed weight below
                }
                if q.companions.contains(name) || q.states[name] != nil {
                    infos.append(info)  // untouched 4-bit weight or companion: copied as is
                } else {
                    infos.append(merged.info(name) ?? info)
                }
                continue
            }
            if keepDense {
                infos.append(merged.info(name)!)
                continue
            }
            let old = try q.dequantize(name, in: base)
            let target = try TensorData.floats(merged, name)
            let quantMap = try TensorData.floats(base, name + ".quant_map")
            var nested: (map: [Float], blocksize: Int)?
            if let nb = s.nestedBlocksize, base.info(name + ".absmax")?.dtype == .uint8 {
                nested = (try TensorData.floats(base, name + ".nested_quant_map"), nb)
            }
            let out = BnbQuantizer.quantize(target, blocksize: s.blocksize, quantMap: quantMap, nested: nested)
            produced[name] = out.packed
            if let a = out.absmax { produced[name + ".absmax"] = AdapterWriter.floatBytes(a) }
            if let c = out.absmaxCodes { produced[name + ".absmax"] = c }
            if let n = out.nestedAbsmax { produced[name + ".nested_absmax"] = AdapterWriter.floatBytes(n) }
            let stateName = name + ".quant_state.bitsandbytes__" + s.quantType
            produced[stateName] = try stateJSON(base: base, name: stateName, offset: out.offset)
            for suffix in BnbQuantization.companionSuffixes where base.info(name + suffix) != nil {
                let companion = name + suffix
                let bytes = try produced[companion] ?? Array(base.bytes(of: companion))
                infos.append(TensorInfo(name: companion, dtype: base.info(companion)!.dtype, shape: companion == stateName ? [bytes.count] : base.info(companion)!.shape))
                produced[companion] = bytes
            }
            infos.append(info)
            // Survival: what the codes kept of the intended change.
            let oldCodes = Array(try base.bytes(of: name))
            var changedCodes = 0
            for i in 0..<old.count {
                let a = i % 2 == 0 ? oldCodes[i / 2] >> 4 : oldCodes[i / 2] & 15
                let b = i % 2 == 0 ? out.packed[i / 2] >> 4 : out.packed[i / 2] & 15
                if a != b { changedCodes += 1 }
            }
            let stored = try dequantize(out, state: s, quantMap: quantMap, nestedMap: nested?.map, count: old.count)
            var dot = 0.0, n1 = 0.0, n2 = 0.0
            for i in 0..<old.count {
                let want = Double(target[i]) - Double(old[i]), got = Double(stored[i]) - Double(old[i])
                dot += want * got
                n1 += want * want
                n2 += got * got
            }
            survival.append(Survival(weight: name, codesChanged: Double(changedCodes) / Double(old.count),
                                     deltaCorrelation: n1 > 0 && n2 > 0 ? dot / (n1 * n2).squareRoot() : 0,
                                     deltaNormRatio: n1 > 0 ? (n2 / n1).squareRoot() : 0))
        }
        _ = try ModelDirectory.writeShards(infos, maxShardSize: maxShardSize, into: output) { t, writer in
            if let bytes = produced[t.name] {
                try bytes.withUnsafeBytes { try writer.write(t.name, bytes: $0) }
            } else if keepDense && changed.contains(t.name) {
                try writer.write(t.name, bytes: try merged.bytes(of: t.name))
            } else if q.states[t.name] != nil || q.companions.contains(t.name) || merged.info(t.name) == nil {
                try writer.write(t.name, bytes: try base.bytes(of: t.name))
            } else {
                try writer.write(t.name, bytes: try merged.bytes(of: t.name))
            }
        }
        return survival.sorted { $0.weight.utf8.lexicographicallyPrecedes($1.weight.utf8) }
    }

    /// The quant_state JSON with the new nested_offset, in Python's `json.dumps` layout.
    static func stateJSON(base: Checkpoint, name: String, offset: Float?) throws -> [UInt8] {
        guard case let .object(members)? = try? JSONParser.parse(Array(try base.bytes(of: name))) else {
            throw LoRACoreError.invalidModule(module: name, detail: "quant_state is not a JSON object")
        }
        let parts = members.map { kv -> String in
            let value: String
            if kv.key == "nested_offset", let offset { value = "\(Double(offset))" } else { value = compact(kv.value) }
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

    /// Dequantizes freshly quantized output the way bitsandbytes would read it back.
    static func dequantize(_ out: BnbQuantizer.Output, state s: BnbQuantization.State, quantMap: [Float], nestedMap: [Float]?, count: Int) throws -> [Float] {
        let blocks = (count + s.blocksize - 1) / s.blocksize
        var absmax: [Float]
        if let codes = out.absmaxCodes, let nested = out.nestedAbsmax, let map = nestedMap, let offset = out.offset, let nb = s.nestedBlocksize {
            absmax = (0..<blocks).map { j in map[Int(codes[j])] * nested[j / nb] + offset }
        } else {
            absmax = out.absmax ?? []
        }
        let format = TensorData.format(s.dtype)!
        return (0..<count).map { i in
            let byte = out.packed[i / 2]
            let code = i % 2 == 0 ? Int(byte >> 4) : Int(byte & 0x0F)
            return FloatCodec.roundTrip(quantMap[code] * absmax[i / s.blocksize], format: format)
        }
    }
}
