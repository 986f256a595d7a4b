import Foundation

/// llama.cpp's split GGUF models: one model in several files, loaded from the first.
///
/// Layout (gguf-py's `GGUFWriter` with `split_max_size`, as `convert_hf_to_gguf.py --split-max-size`
/// and `llama-gguf-split` write it): shard k of n (1-based) of the output `X.gguf` is named
/// `X-0000k-of-0000n.gguf` (`SHARD_NAME_FORMAT`, `{stem}-{k:05d}-of-{n:05d}.gguf`). Each shard is a
/// whole GGUF file holding a run of the model's tensors in model order. The first carries every
/// metadata key of the model and then the split keys; every other shard carries the split keys
/// only: `split.no` (UINT16, the 0-based shard number), `split.count` (UINT16, n) and
/// `split.tensors.count` (INT32, the model's tensors in all shards), in that order. A model that
/// would be one shard is written as one file, without split keys.
///
/// Shard boundaries (`GGUFWriter.add_tensor_info`): tensors are taken in order, and a new shard
/// starts before a tensor when the current one holds at least one tensor and its tensors' bytes
/// (unpadded) plus the next tensor's would exceed the limit, so a tensor larger than the limit
/// gets a shard of its own.
public enum GGUFSplit {
    public static let numberKey = "split.no"
    public static let countKey = "split.count"
    public static let tensorsCountKey = "split.tensors.count"

    /// Whether `key` is one of the split keys (which a merge writes afresh for its own shards).
    public static func isSplitKey(_ key: String) -> Bool {
        key == numberKey || key == countKey || key == tensorsCountKey
    }

    /// The path of shard `number` (1-based) of `count` of the output `path` (which ends in `.gguf`):
    /// `X.gguf` → `X-0000number-of-0000count.gguf`, in the same directory.
    public static func shardPath(_ path: String, number: Int, count: Int) -> String {
        let stem = path.hasSuffix(".gguf") ? String(path.dropLast(5)) : path
        return stem + "-" + digits(number) + "-of-" + digits(count) + ".gguf"
    }

    /// The paths of all `count` shards of the output `path`; `[path]` itself when `count` is 1.
    public static func shardPaths(_ path: String, count: Int) -> [String] {
        count == 1 ? [path] : (1...count).map { shardPath(path, number: $0, count: count) }
    }

    /// The split keys of shard `number` (0-based) of `count`, in gguf-py's order and types.
    public static func keys(number: Int, count: Int, tensors: Int) -> [(key: String, value: GGUFValue)] {
        [(numberKey, .uint16(UInt16(number))), (countKey, .uint16(UInt16(count))), (tensorsCountKey, .int32(Int32(tensors)))]
    }

    /// `convert_hf_to_gguf.py`'s `split_str_to_n_bytes`: decimal digits, optionally followed by `K`,
    /// `M` or `G` (powers of 1000: `5G` is 5 000 000 000 bytes). Nil for anything else, and for 0
    /// (which the converter takes as "do not split").
    public static func parseSize(_ text: String) -> Int? {
        let units: [Character: Int] = ["K": 1000, "M": 1000 * 1000, "G": 1000 * 1000 * 1000]
        var digits = Substring(text), unit = 1
        if let last = text.last, let u = units[last] {
            digits = digits.dropLast()
            unit = u
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(digits) else { return nil }
        let (bytes, overflow) = n.multipliedReportingOverflow(by: unit)
        return overflow || bytes == 0 ? nil : bytes
    }

    /// gguf-py's shard boundaries for tensors of `byteCounts` (unpadded, in file order) under a
    /// limit of `maxSize` bytes per shard: the number of tensors in each shard.
    public static func tensorCounts(byteCounts: [Int], maxSize: Int) -> [Int] {
        var counts = [0], bytes = 0
        for n in byteCounts {
            if counts[counts.count - 1] > 0 && bytes + n > maxSize {
                counts.append(0)
                bytes = 0
            }
            counts[counts.count - 1] += 1
            bytes += n
        }
        return counts
    }

    /// Opens the model at `path`: that file alone when it has no `split.count` above 1, else all
    /// its shards in order, `path` being the first (`X-00001-of-0000n.gguf`).
    /// - Parameter shards: the shards' paths in order (`path` first), when they are not beside it
    ///   under their names (a merge's staged shards); nil finds them by name.
    ///
    /// Checked, with a `GGUFError.invalidSplit` naming the file: `path` is shard 1 (`split.no` 0)
    /// and named as one; every other shard exists under its name and has `split.no` its number,
    /// the first's `split.count`, and (when present) its `split.tensors.count`; the shards hold
    /// `split.tensors.count` tensors in all; and a tensor name in two shards is
    /// `GGUFError.duplicateTensor` naming the second.
    /// - Throws: also what `GGUFFile.init` throws for each shard.
    public static func open(_ path: String, shards: [String]? = nil) throws -> [GGUFFile] {
        let first = try GGUFFile(path: path)
        let h = first.header
        guard let countValue = h.value(countKey) else { return [first] }
        guard let count = countValue.integer, count >= 1, count <= 99_999 else {
            throw GGUFError.invalidSplit(file: path, detail: "\(countKey) is \(countValue.summary), not a shard count")
        }
        let number = h.value(numberKey)?.integer
        guard number == 0 else {
            let which = number.map { "shard \($0 + 1) of \(count)" } ?? "a shard without \(numberKey)"
            throw GGUFError.invalidSplit(file: path, detail: "this is \(which): give the first shard (…-00001-of-\(digits(Int(count))).gguf)")
        }
        guard count > 1 else { return [first] }
        let suffix = "-" + digits(1) + "-of-" + digits(Int(count)) + ".gguf"
        guard path.hasSuffix(suffix) else {
            throw GGUFError.invalidSplit(file: path, detail: "shard 1 of \(count) is not named …\(suffix), so its other shards cannot be found")
        }
        guard let total = h.value(tensorsCountKey)?.integer else { throw GGUFError.missingKey(file: path, key: tensorsCountKey) }
        if let shards, shards.count != count {
            throw GGUFError.invalidSplit(file: path, detail: "\(countKey) is \(count), and \(shards.count) shards were given")
        }
        let output = String(path.dropLast(suffix.count)) + ".gguf"
        var files = [first]
        var names = Set(h.tensors.map(\.name))
        for k in 1..<Int(count) {
            let shard = shards?[k] ?? shardPath(output, number: k + 1, count: Int(count))
            guard FileManager.default.fileExists(atPath: shard) else {
                throw GGUFError.invalidSplit(file: shard, detail: "missing: shard \(k + 1) of \(count) of \(path)")
            }
            let file = try GGUFFile(path: shard)
            let s = file.header
            let checks: [(String, Int64?, Bool)] = [(numberKey, Int64(k), true), (countKey, count, true), (tensorsCountKey, total, false)]
            for (key, want, required) in checks {
                let got = s.value(key)?.integer
                guard got == want || (got == nil && !required) else {
                    throw GGUFError.invalidSplit(file: shard, detail: "\(key) is \(got.map(String.init) ?? "missing"), but shard \(k + 1) of \(path) needs \(want!)")
                }
            }
            for t in s.tensors where !names.insert(t.name).inserted {
                throw GGUFError.duplicateTensor(file: shard, tensor: t.name)
            }
            files.append(file)
        }
        guard names.count == total else {
            throw GGUFError.invalidSplit(file: path, detail: "\(tensorsCountKey) is \(total), but its \(count) shards hold \(names.count) tensors")
        }
        return files
    }

    /// `n` in at least five digits (`%05d`).
    private static func digits(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 5 - s.count)) + s
    }
}
