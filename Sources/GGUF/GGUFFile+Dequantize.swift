extension GGUFFile {
    /// Decodes rows `rows` of `tensor` into `out` (see `GGMLDequantizer` for the exact arithmetic),
    /// reading only their blocks from the map: a streaming pass decodes one range of rows at a time.
    /// - Parameters:
    ///   - tensor: a tensor of this file.
    ///   - rows: rows of `tensor` (each `tensor.rowLength` elements; see `GGUFTensorInfo.rowCount`).
    ///   - out: `rows.count × tensor.rowLength` elements, row-major (ggml order: row r, element i
    ///     is `out[(r − rows.lowerBound) × rowLength + i]`).
    /// - Throws: `GGUFError.invalidRowRange` for rows outside the tensor;
    ///   `GGUFError.unsupportedType` naming the tensor and type when it cannot be decoded.
    public func dequantize(_ tensor: GGUFTensorInfo, rows: Range<Int>, into out: UnsafeMutableBufferPointer<Float>) throws {
        guard rows.lowerBound >= 0, rows.upperBound <= tensor.rowCount else {
            throw GGUFError.invalidRowRange(file: path, tensor: tensor.name, rows: rows, rowCount: tensor.rowCount)
        }
        precondition(out.count == rows.count * tensor.rowLength, "\(out.count) outputs for \(rows.count) rows of \(tensor.rowLength)")
        let all = bytes(of: tensor)
        let slice = UnsafeRawBufferPointer(rebasing: all[rows.lowerBound * tensor.rowByteCount..<rows.upperBound * tensor.rowByteCount])
        try GGMLDequantizer.dequantize(slice, type: tensor.type, into: out, tensor: tensor.name)
    }

    /// Decodes rows `rows` of `tensor` (all of them when nil) into a new array, row-major.
    /// - Parameters:
    ///   - tensor: a tensor of this file.
    ///   - rows: rows of `tensor`, or nil for the whole tensor.
    /// - Returns: `rows.count × tensor.rowLength` elements.
    /// - Throws: as `dequantize(_:rows:into:)`.
    public func dequantize(_ tensor: GGUFTensorInfo, rows: Range<Int>? = nil) throws -> [Float] {
        let rows = rows ?? 0..<tensor.rowCount
        let count = max(0, rows.count) * tensor.rowLength
        return try [Float](unsafeUninitializedCapacity: count) { out, initialized in
            try dequantize(tensor, rows: rows, into: out)
            initialized = count
        }
    }
}
