import Foundation
import SafeTensors

/// The part of `verify` that looks at everything but tensor values: the merged directory's side
/// files against the base's, and each merged safetensors file's `__metadata__`.
///
/// What merge writes (`SideFiles.copy`, `ChunkedOutput`): every side file of the base (the files
/// that are not safetensors, shard indexes, pickles, hidden files or directories) with the same
/// contents, except config.json, where `torch_dtype`/`dtype` names the output dtype after `--dtype`,
/// `quantization_config` is dropped by a dense merge of a 4-bit base, and `llm_int8_skip_modules`
/// grows with `--keep-quantized`; and `{"format": "pt"}` as every file's metadata. Hidden files
/// (lora-tool's own `.lora-tool` marker) are not side files.
enum SideFileCheck {
    /// The metadata merge writes in every safetensors file.
    static let mergeMetadata: [(key: String, value: String)] = [("format", "pt")]

    /// Side files of `dir`, as `SideFiles.copy` picks them, sorted; `includePickles` lists pickle
    /// files too (merge never writes one, so in a merged directory they are extra).
    static func names(in dir: String, includePickles: Bool) -> [String] {
        let all = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted(by: utf8Precedes)
        return all.filter { name in
            if name.hasSuffix(".safetensors") || name.hasSuffix(".safetensors.zst") || name.hasSuffix(".safetensors.index.json") || name.hasPrefix(".") {
                return false
            }
            var st = stat()
            if stat(dir + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR { return false }
            return includePickles || !Checkpoint.pickleExtensions.contains((name as NSString).pathExtension)
        }
    }

    /// Compares the side files of `merged` with those of `base`.
    /// - Parameters:
    ///   - outputDType: the one float dtype of the merged tensors, if they share one (the name
    ///     config.json's `torch_dtype`/`dtype` may carry after `--dtype`).
    ///   - quantizedBase: the base is bitsandbytes 4-bit (config.json may drop `quantization_config`,
    ///     or list more `llm_int8_skip_modules`).
    ///   - layerSources: the source layer of each layer after `layer_replication` (config.json then
    ///     has their count as `num_hidden_layers`, and `layer_types` listed for them).
    static func compare(base: String, merged: String, outputDType: DType?, quantizedBase: Bool, layerSources: [Int]? = nil) -> [VerifyReport.FileCheck] {
        let baseNames = names(in: base, includePickles: false), mergedNames = names(in: merged, includePickles: true)
        let inBase = Set(baseNames), inMerged = Set(mergedNames)
        var checks: [VerifyReport.FileCheck] = []
        for name in baseNames where !inMerged.contains(name) {
            checks.append(.init(file: name, status: .missing, detail: "missing from the merged directory (the base has it)"))
        }
        for name in mergedNames where !inBase.contains(name) {
            checks.append(.init(file: name, status: .extra, detail: "in the merged directory but not in the base (merge writes no such file)"))
        }
        for name in baseNames where inMerged.contains(name) {
            let a = base + "/" + name, b = merged + "/" + name
            do {
                if name == "config.json" {
                    checks.append(try compareConfig(a, b, outputDType: outputDType, quantizedBase: quantizedBase, layerSources: layerSources))
                } else if let offset = try firstDifference(a, b) {
                    checks.append(.init(file: name, status: .differs, detail: "differs from the base's copy from byte \(offset) (merge copies it unchanged)"))
                } else {
                    checks.append(.init(file: name, status: .equal))
                }
            } catch {
                checks.append(.init(file: name, status: .differs, detail: "cannot be compared: \(error.localizedDescription)"))
            }
        }
        return checks
    }

    /// Checks each file's `__metadata__` against what merge writes: `expected` (transformers'
    /// `{"format": "pt"}`, or a single-file base's own metadata, which its merge keeps).
    static func compareMetadata(_ merged: Checkpoint, expected: [(key: String, value: String)] = mergeMetadata) -> [VerifyReport.FileCheck] {
        let expected = expected.sorted { utf8Precedes($0.key, $1.key) }
        return merged.files.map { file in
            let name = (file.path as NSString).lastPathComponent + " __metadata__"
            let got = (file.metadata ?? []).sorted { utf8Precedes($0.key, $1.key) }
            guard got.count == expected.count && zip(got, expected).allSatisfy({ $0.key == $1.key && $0.value == $1.value }) else {
                func shown(_ m: [(key: String, value: String)]?) -> String { m.map { "{" + $0.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ") + "}" } ?? "absent" }
                return .init(file: name, status: .differs, detail: "is \(shown(file.metadata)); merge writes \(shown(expected))")
            }
            return .init(file: name, status: .equal)
        }
    }

    /// config.json: equal as JSON (member order aside) up to the keys merge changes.
    private static func compareConfig(_ base: String, _ merged: String, outputDType: DType?, quantizedBase: Bool, layerSources: [Int]?) throws
        -> VerifyReport.FileCheck
    {
        guard let original = try SideFiles.readJSON(base)?.objectMembers else {
            // Not an object: merge copies it as it is.
            return try firstDifference(base, merged).map { .init(file: "config.json", status: .differs, detail: "differs from the base's copy from byte \($0)") }
                ?? .init(file: "config.json", status: .equal)
        }
        guard let m = try SideFiles.readJSON(merged)?.objectMembers else {
            return .init(file: "config.json", status: .differs, detail: "is not a JSON object (the base's is)")
        }
        // What merge writes for replicated layers is the expected config.
        let b = SideFiles.replicatingLayers(original, sources: layerSources)
        let bm = Dictionary(b.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
        let mm = Dictionary(m.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
        var problems: [String] = [], expected: [String] = []
        let torchName = outputDType.flatMap { d in OutputDType.allCases.first { $0.dtype == d }?.torchName }
        for key in Set(bm.keys).union(mm.keys).sorted(by: utf8Precedes) {
            let bv = bm[key], mv = mm[key]
            if let bv, let mv, same(bv, mv) { continue }
            if key == "torch_dtype" || key == "dtype", let torchName, mv?.stringValue == torchName {
                expected.append(key)  // --dtype
                continue
            }
            if key == "quantization_config", quantizedBase {
                if mv == nil {
                    expected.append(key)  // a dense merge of a 4-bit base
                    continue
                }
                if let bq = bv?.objectMembers, let mq = mv?.objectMembers, skipModulesOnlyGrew(bq, mq) {
                    expected.append(key + ".llm_int8_skip_modules")  // --keep-quantized
                    continue
                }
            }
            switch (bv, mv) {
            case (nil, let mv?): problems.append("'\(key)' is \(compact(mv)), the base has no such key")
            case (let bv?, nil): problems.append("'\(key)' is missing (the base has \(compact(bv)))")
            case let (bv?, mv?): problems.append("'\(key)' is \(compact(mv)), the base has \(compact(bv))")
            default: break
            }
        }
        if problems.isEmpty { return .init(file: "config.json", status: .equal, expectedChanges: expected) }
        return .init(file: "config.json", status: .differs, expectedChanges: expected, detail: problems.joined(separator: "; "))
    }

    /// `quantization_config` members equal but for `llm_int8_skip_modules`, which may only have grown.
    private static func skipModulesOnlyGrew(_ b: [(key: String, value: JSONValue)], _ m: [(key: String, value: JSONValue)]) -> Bool {
        let key = "llm_int8_skip_modules"
        let rest = { (x: [(key: String, value: JSONValue)]) in JSONValue.object(x.filter { $0.key != key }) }
        guard same(rest(b), rest(m)) else { return false }
        let strings = { (x: [(key: String, value: JSONValue)]) in
            Set((x.first { $0.key == key }?.value.arrayValue ?? []).compactMap(\.stringValue))
        }
        return strings(b).isSubset(of: strings(m))
    }

    /// JSON equality with objects compared as unordered maps and numbers by value.
    static func same(_ a: JSONValue, _ b: JSONValue) -> Bool {
        switch (a, b) {
        case let (.number(x), .number(y)): return x == y || (Double(x) != nil && Double(x) == Double(y))
        case let (.array(x), .array(y)): return x.count == y.count && zip(x, y).allSatisfy { same($0, $1) }
        case let (.object(x), .object(y)):
            guard x.count == y.count else { return false }
            let ym = Dictionary(y.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
            return x.allSatisfy { kv in ym[kv.key].map { same(kv.value, $0) } ?? false }
        default: return a == b
        }
    }

    /// A JSON value on one line, shortened for messages.
    private static func compact(_ v: JSONValue) -> String {
        let s = JSONWriter.pretty(v).split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
        return s.count > 80 ? String(s.prefix(77)) + "..." : s
    }

    /// The first byte offset where the two regular files differ (the shorter length when one is a
    /// prefix of the other), or nil when they are identical.
    static func firstDifference(_ a: String, _ b: String) throws -> Int? {
        let fa = try RegularFile.open(a)
        defer { close(fa) }
        let fb = try RegularFile.open(b)
        defer { close(fb) }
        let chunk = 1 << 20
        var ba = [UInt8](repeating: 0, count: chunk), bb = [UInt8](repeating: 0, count: chunk)
        var offset = 0
        while true {
            let na = try readFull(fa, &ba, path: a), nb = try readFull(fb, &bb, path: b)
            let n = min(na, nb)
            if let k = (0..<n).first(where: { ba[$0] != bb[$0] }) { return offset + k }
            if na != nb { return offset + n }
            if na == 0 { return nil }
            offset += n
        }
    }

    /// Reads until `buffer` is full or the file ends; the count read.
    private static func readFull(_ fd: Int32, _ buffer: inout [UInt8], path: String) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: path, operation: "read", errno: errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }
}
