import GGUF

extension GGUFModel {
    /// Tensors per file, in file order: `[tensors.count]`, or each shard's of a split model.
    public var tensorCounts: [Int] { files.map(\.header.tensors.count) }

    /// The model's metadata as written for a merge: the first file's keys in order, without the
    /// split keys (`GGUFSplit`: an output's shards get their own).
    public var modelMetadata: [(key: String, value: GGUFValue)] {
        file.header.metadata.filter { !GGUFSplit.isSplitKey($0.key) }
    }

    /// The tensor named `ggufName` in whichever file holds it, or nil.
    public func info(_ ggufName: String) -> GGUFTensorInfo? {
        for f in files { if let t = f.info(ggufName) { return t } }
        return nil
    }
}

extension GGUFModel {
    /// The bytes of `tensor` (a tensor of this model) in the file that holds it.
    public func bytes(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        let holder = files.first { $0.info(tensor.name) == tensor }
        precondition(holder != nil, "\(tensor.name) is a tensor of this model")
        return holder!.bytes(of: tensor)
    }
}
