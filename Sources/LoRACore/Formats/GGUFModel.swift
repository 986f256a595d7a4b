import GGUF
import SafeTensors

/// A GGUF model of the Llama family opened as a `TensorStream` under transformers' names, so that
/// the merge plan pairs adapters with it as with a safetensors model.
///
/// Every tensor becomes a `GGUFTensor` (transformers shape and row order, block types decoded to
/// f32 as read); names come from `GGUFTensorNameMap` (tensors outside its table, such as
/// `rope_freqs.weight`, keep their GGUF names; tensors the converter stored transformed, gemma's
/// norms as 1 + w, are exposed as stored, and `refuseTransformedTensors` keeps merges off them).
/// For `llama`, `attn_q` rows are un-permuted with `{arch}.attention.head_count` heads and
/// `attn_k` rows with `head_count_kv` (or `head_count` when absent), exactly undoing
/// `convert_hf_to_gguf.py`'s `LlamaModel.permute` (no other architecture is permuted); the GGUF sink
/// permutes them back. Merging in transformers order and permuting the result is the same
/// arithmetic, element for element, as permuting B's rows (and any per-row quantity of any adapter
/// type) and merging in GGUF order.
///
/// A split model (`X-00001-of-0000n.gguf`, `GGUFSplit`) is opened from its first shard as one
/// model: the metadata is the first shard's, the tensors are every shard's in shard order, each
/// read from its own file.
///
/// Opening reads the header only (the file is mapped; tensor bytes are read when filled).
public final class GGUFModel: Sendable {
    /// The file (a split model's first shard, which holds its metadata).
    public let file: GGUFFile
    /// Every file of the model in order: `[file]`, or a split model's shards.
    public let files: [GGUFFile]
    public let names: GGUFTensorNameMap
    /// The file's tensors in file order, each with its name in `stream`.
    public let tensors: [(info: GGUFTensorInfo, name: String)]
    /// The tensors under transformers names (sorted), no side files.
    public let stream: TensorStream
    /// `head_count` and `head_count_kv` when the architecture permutes q/k rows (llama), else nil.
    public let ropeHeads: (query: Int, key: Int)?

    /// - Throws: `GGUFError` for a malformed file, an architecture outside `GGUFTensorNameMap`,
    ///   missing head counts (llama), or q/k rows the heads do not divide; `SafeTensorsError`
    ///   when the file cannot be opened.
    public convenience init(path: String) throws {
        try self.init(path: path, undoRopePermutation: true)
    }

    /// - Parameters:
    ///   - undoRopePermutation: false exposes q/k rows as stored (tests show that the merge is then
    ///     wrong: what the permutation is for).
    ///   - shards: a split model's shards in order, when they are not beside `path` (`GGUFSplit.open`).
    init(path: String, undoRopePermutation: Bool, shards: [String]? = nil) throws {
        files = try GGUFSplit.open(path, shards: shards)
        file = files[0]
        guard let arch = file.header.value("general.architecture")?.string else {
            throw GGUFError.missingKey(file: path, key: "general.architecture")
        }
        names = try GGUFTensorNameMap(architecture: arch, file: path)
        var heads: (query: Int, key: Int)?
        if names.permutesQueryKey {
            guard let q = file.header.value("\(arch).attention.head_count")?.integer, q > 0 else {
                throw GGUFError.missingKey(file: path, key: "\(arch).attention.head_count")
            }
            let kvKey = "\(arch).attention.head_count_kv"
            let kv = file.header.value(kvKey).map(\.integer) ?? q
            guard let kv, kv > 0 else { throw GGUFError.missingKey(file: path, key: kvKey) }
            heads = (Int(q), Int(kv))
        }
        var list: [(info: GGUFTensorInfo, name: String)] = []
        var sources: [(name: String, source: any TensorSource)] = []
        var seen = Set<String>()
        for (file, info) in files.flatMap({ f in f.header.tensors.map { (f, $0) } }) {
            let name = names.transformersName(of: info.name) ?? info.name
            var permutation: GGUFRowPermutation?
            if let role = names.ropeRole(of: info.name), let heads, undoRopePermutation {
                let n = role == .query ? heads.query : heads.key
                let rows = Int(info.dims.last ?? 1)
                guard let p = GGUFRowPermutation(heads: n, rows: rows), info.dims.count <= 2 else {
                    throw GGUFError.incompatibleTensor(
                        file: file.path, tensor: info.name,
                        detail: "\(rows) rows (dims \(info.dims)) cannot be llama.cpp's rope permutation of \(n) heads (an even number of rows per head)")
                }
                permutation = p
            }
            guard seen.insert(name).inserted else {
                throw GGUFError.incompatibleTensor(file: file.path, tensor: info.name, detail: "its transformers name '\(name)' is also another tensor's")
            }
            list.append((info, name))
            sources.append((name, GGUFTensor(file: file, info: info, permutation: permutation)))
        }
        tensors = list
        ropeHeads = heads
        stream = TensorStream(sources, path: path, sideFiles: nil, metadata: nil)
    }

    /// Refuses a merge that changes a tensor the converter stored transformed
    /// (`GGUFTensorNameMap.storedTransformation`: gemma's norm weights as 1 + w), whose values are
    /// not the transformers values `plan`'s adapters change.
    /// - Throws: `GGUFError.transformedTensor` naming the file and the first such tensor (file order).
    public func refuseTransformedTensors(changedBy plan: MergePlan) throws {
        for (info, name) in tensors where plan.actions[name] != nil {
            if let transformation = names.storedTransformation(of: info.name) {
                throw GGUFError.transformedTensor(file: file.path, tensor: info.name, transformation: transformation)
            }
        }
    }
}
