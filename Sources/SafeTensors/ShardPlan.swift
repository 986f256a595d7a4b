/// How a set of tensors is split into transformers-style shard files.
///
/// Greedy over the given order, as huggingface_hub's `split_state_dict_into_shards_factory`: a new
/// shard starts when the next tensor would push the current one past `maxShardSize`; a tensor larger
/// than the limit gets a shard of its own. One shard is named `model.safetensors` (no index); N > 1
/// are `model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`.
public struct ShardPlan: Sendable {
    public struct Shard: Sendable {
        public var fileName: String
        public var tensors: [TensorInfo]
    }

    public var shards: [Shard]

    /// Plans shards for `tensors` (name, dtype, shape; offsets ignored) in the order given.
    /// - Parameters:
    ///   - maxShardSize: bytes of tensor data per shard (decimal units, as transformers counts them).
    ///   - prefix: file name stem, `model` for a model directory.
    public init(tensors: [TensorInfo], maxShardSize: Int, prefix: String = "model") {
        var groups: [[TensorInfo]] = []
        var current: [TensorInfo] = []
        var size = 0
        for t in tensors {
            let bytes = TensorInfo.byteCount(dtype: t.dtype, shape: t.shape) ?? 0
            if !current.isEmpty && size + bytes > maxShardSize {
                groups.append(current)
                current = []
                size = 0
            }
            current.append(t)
            size += bytes
        }
        if !current.isEmpty || groups.isEmpty { groups.append(current) }
        let n = groups.count
        shards = groups.enumerated().map { i, g in
            Shard(fileName: n == 1 ? "\(prefix).safetensors" : "\(prefix)-\(pad5(i + 1))-of-\(pad5(n)).safetensors", tensors: g)
        }
    }

    /// The index to write beside the shards, or nil for a single shard.
    public var index: ShardIndex? {
        guard shards.count > 1 else { return nil }
        var map: [(tensor: String, shard: String)] = []
        var total: UInt64 = 0
        for s in shards {
            for t in s.tensors {
                map.append((t.name, s.fileName))
                total += UInt64(TensorInfo.byteCount(dtype: t.dtype, shape: t.shape) ?? 0)
            }
        }
        return ShardIndex(weightMap: map, totalSize: total)
    }
}

private func pad5(_ i: Int) -> String {
    let s = String(i)
    return String(repeating: "0", count: max(0, 5 - s.count)) + s
}
