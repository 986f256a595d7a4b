import SafeTensors

/// A tensor stored in a safetensors file, read straight into the caller's buffer with `pread`
/// (a kernel copy from the page cache: the file is never mapped for this, so resident memory does
/// not follow the file system's folio sizes).
public struct StoredTensor: TensorSource {
    public let checkpoint: Checkpoint
    public let name: String
    public let dtype: DType
    public let shape: [Int]

    /// The tensor `name` of `checkpoint`; nil when it has none.
    public init?(_ checkpoint: Checkpoint, _ name: String) {
        guard let info = checkpoint.info(name) else { return nil }
        self.checkpoint = checkpoint
        self.name = name
        dtype = info.dtype
        shape = info.shape
    }

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let loc = checkpoint.location(of: name)!
        try loc.file.checkUnchanged()
        try loc.file.read(at: loc.offset + range.lowerBound, count: range.count, into: destination)
    }

    public func finished() { checkpoint.release(name) }
}
