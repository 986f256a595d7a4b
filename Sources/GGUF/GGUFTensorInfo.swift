/// One tensor info of a GGUF header.
///
/// Layout in the file: name (uint64 length + UTF-8 bytes), n_dims (uint32, at most 4), n_dims
/// uint64 dimensions in ggml order (`dims[0]` is the contiguous one, so a PyTorch `[out, in]`
/// weight is stored as `[in, out]`), the ggml type (uint32), and the data offset (uint64) relative
/// to the start of the data section, a multiple of the file's alignment.
public struct GGUFTensorInfo: Equatable, Sendable {
    public let name: String
    /// Dimensions in ggml order (innermost first).
    public let dims: [UInt64]
    public let type: GGMLType
    /// Offset of the data from the start of the data section.
    public let offset: UInt64
    /// Exact size of the data: `dims[0] / blockSize × typeSize × dims[1] × …`.
    public let byteCount: Int

    /// Element count (the product of the dimensions; checked not to overflow when read).
    public var elementCount: Int { dims.reduce(1) { $0 * Int($1) } }

    /// Elements per row: `dims[0]`, the contiguous dimension (a PyTorch `[out, in]` weight's `in`);
    /// 1 for a tensor without dimensions.
    public var rowLength: Int { Int(dims.first ?? 1) }

    /// Rows: the product of the dimensions after the first (`out` for an `[out, in]` weight).
    public var rowCount: Int { dims.dropFirst().reduce(1) { $0 * Int($1) } }

    /// Bytes per row: `rowLength / blockSize × typeSize` (a row is always whole blocks).
    public var rowByteCount: Int { rowLength / type.blockSize * type.typeSize }
}
