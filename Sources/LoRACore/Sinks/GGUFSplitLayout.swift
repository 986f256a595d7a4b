import GGUF

/// How a GGUF output is cut into files (`GGUFSplit`: llama.cpp's split models).
public enum GGUFSplitLayout: Sendable, Equatable {
    /// One file.
    case none
    /// gguf-py's `split_max_size`: a new shard before a tensor that would take the current one's
    /// tensor bytes (unpadded) past this many (`--split-max-size`). A model that fits is one file.
    case maxSize(Int)
    /// This many tensors in each shard, in order: a split base's own boundaries.
    case tensorCounts([Int])

    /// The tensors per file for tensors of `byteCounts` bytes (in file order).
    /// - Throws: `LoRACoreError.invalidRequest` naming `file` when `.tensorCounts` does not cover
    ///   the tensors exactly.
    func tensorCounts(_ byteCounts: [Int], file: String) throws -> [Int] {
        switch self {
        case .none:
            return [byteCounts.count]
        case let .maxSize(limit):
            return GGUFSplit.tensorCounts(byteCounts: byteCounts, maxSize: limit)
        case let .tensorCounts(counts):
            guard counts.reduce(0, +) == byteCounts.count, counts.allSatisfy({ $0 > 0 }) else {
                throw LoRACoreError.invalidRequest("\(file): shards of \(counts) tensors cannot hold its \(byteCounts.count) tensors")
            }
            return counts
        }
    }
}
