import SafeTensors

/// Named tensors that can be read whole or by byte range: a checkpoint on disk, or a
/// `TensorStream` whose tensors are computed. The merge plan and the checkers read starting values
/// through this, so a merge or a verify against a 4-bit base reads decoded weights the same way it
/// reads stored ones.
public protocol TensorStore: AnyObject, Sendable {
    /// Where the tensors come from, for messages.
    var path: String { get }
    /// Tensor names, sorted by UTF-8 bytes.
    var names: [String] { get }
    func info(_ name: String) -> TensorInfo?
    /// All bytes of `name`: a read-only mapping for a stored tensor, a buffer kept until
    /// `release(name)` for a computed one.
    func bytes(of name: String) throws -> UnsafeRawBufferPointer
    /// Bytes `range` of `name` into `destination`.
    func read(_ name: String, bytes range: Range<Int>, into destination: UnsafeMutableRawPointer) throws
    /// `name` is done with: drop its pages or its computed bytes.
    func release(_ name: String)
    /// Bytes of `name` (from `bytes(of:)`) already used: drop their pages from the resident set
    /// when they are a file mapping; computed bytes are left alone.
    func dropPages(_ bytes: UnsafeRawBufferPointer, of name: String)
}

extension Checkpoint: TensorStore {
    public func dropPages(_ bytes: UnsafeRawBufferPointer, of name: String) { MappedFile.releasePages(bytes) }

    public func read(_ name: String, bytes range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        guard let loc = location(of: name) else { throw SafeTensorsError.tensorNotFound(tensor: name, in: path) }
        try loc.file.checkUnchanged()
        try loc.file.read(at: loc.offset + range.lowerBound, count: range.count, into: destination)
    }
}
