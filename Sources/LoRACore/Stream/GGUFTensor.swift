import GGUF
import LoRAKernels
import SafeTensors

/// A tensor of a GGUF file as transformers sees it: its transformers shape (the GGUF dimensions
/// reversed: GGUF `[in, out]` is `[out, in]`), rows in transformers' order (llama.cpp's Q/K rope
/// permutation undone, `GGUFRowPermutation`), and bytes on demand, any range at a time.
///
/// dtype: F32, F16 and BF16 tensors keep theirs (their bytes are read from the map as stored);
/// every block type (Q8_0, Q4_K, …) is F32, decoded by `GGMLDequantizer` exactly as ggml's
/// `dequantize_row_*` (only the GGUF rows a range needs). A merge therefore starts from the same
/// f32 values ggml computes with, and a merged F16 tensor is rounded once, from f32.
///
/// A type `GGMLDequantizer` does not decode still has a source (F32 by shape), so that untouched
/// tensors of any type are copied by the GGUF sink; filling it throws `GGUFError.unsupportedType`
/// naming the tensor.
public struct GGUFTensor: TensorSource {
    public let file: GGUFFile
    /// The GGUF tensor (its GGUF name, dimensions, type).
    public let info: GGUFTensorInfo
    /// The converter's row permutation of this tensor, when it has one; rows here are transformers'.
    public let permutation: GGUFRowPermutation?
    public let dtype: DType
    public let shape: [Int]

    /// - Parameter permutation: rows of `info` (transformers' `shape[0]`; a 1-D tensor's elements).
    public init(file: GGUFFile, info: GGUFTensorInfo, permutation: GGUFRowPermutation?) {
        self.file = file
        self.info = info
        self.permutation = permutation
        switch info.type {
        case .f16: dtype = .float16
        case .bf16: dtype = .bfloat16
        default: dtype = .float32
        }
        shape = info.dims.reversed().map { Int($0) }
    }

    /// Whether the stored bytes are this source's bytes (F32, F16, BF16), not decoded from blocks.
    var isPlain: Bool { info.type == .f32 || info.type == .f16 || info.type == .bf16 }

    /// Elements per transformers row (1 for a 1-D tensor).
    var columns: Int { shape.count >= 2 ? shape.dropFirst().reduce(1, *) : 1 }

    /// Elements read per step when decoding blocks (bounds the scratch buffer).
    static let step = 1 << 16

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        guard !range.isEmpty else { return }
        let size = dtype == .float32 ? 4 : 2
        let e0 = range.lowerBound / size, e1 = (range.upperBound + size - 1) / size
        if e0 * size == range.lowerBound && e1 * size == range.upperBound {
            try elements(e0..<e1, into: destination)
            return
        }
        var scratch = [UInt8](uninitializedCount: (e1 - e0) * size)
        try scratch.withUnsafeMutableBytes { try elements(e0..<e1, into: $0.baseAddress!) }
        scratch.withUnsafeBytes {
            destination.copyMemory(from: $0.baseAddress! + (range.lowerBound - e0 * size), byteCount: range.count)
        }
    }

    public func finished() { MappedFile.releasePages(file.bytes(of: info)) }

    /// Elements `elements` (row-major, transformers order) as `dtype` bytes.
    private func elements(_ elements: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let size = dtype == .float32 ? 4 : 2
        guard let p = permutation else {
            try stored(elements, into: destination)
            return
        }
        // Row by row: transformers row r is stored as GGUF row p(r) (a whole row is never split
        // across blocks: GGUF rows are whole blocks).
        let cols = columns
        var e = elements.lowerBound
        var row = [UInt8](uninitializedCount: cols * size)
        while e < elements.upperBound {
            let r = e / cols, c0 = e % cols, c1 = min(cols, elements.upperBound - r * cols)
            let g = p.ggufRow(ofTransformersRow: r)
            try row.withUnsafeMutableBytes { try stored((g * cols)..<((g + 1) * cols), into: $0.baseAddress!) }
            row.withUnsafeBytes {
                (destination + (e - elements.lowerBound) * size).copyMemory(from: $0.baseAddress! + c0 * size, byteCount: (c1 - c0) * size)
            }
            e = r * cols + c1
        }
    }

    /// Stored elements `elements` (GGUF order) as `dtype` bytes: copied, or decoded from the
    /// blocks of the GGUF rows they lie in, `step` elements at a time (whole rows straight into
    /// `destination`, partial ones through a scratch buffer).
    private func stored(_ elements: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        if isPlain {
            let size = dtype == .float32 ? 4 : 2
            let all = file.bytes(of: info)
            destination.copyMemory(from: all.baseAddress! + elements.lowerBound * size, byteCount: elements.count * size)
            return
        }
        guard GGMLDequantizer.supportedTypes.contains(info.type) else {
            throw GGUFError.unsupportedType(type: info.type, operation: "dequantizing", tensor: info.name)
        }
        let rowLength = info.rowLength
        let out = destination.assumingMemoryBound(to: Float.self)
        var e = elements.lowerBound
        var values: [Float] = []
        while e < elements.upperBound {
            let g0 = e / rowLength
            let g1 = min(info.rowCount, max(g0 + 1, (min(elements.upperBound, e + GGUFTensor.step) + rowLength - 1) / rowLength))
            let n = (g1 - g0) * rowLength
            let to = min(elements.upperBound, g1 * rowLength)
            if e == g0 * rowLength && to == g1 * rowLength {  // whole rows: decoded in place
                try file.dequantize(info, rows: g0..<g1, into: UnsafeMutableBufferPointer(start: out + (e - elements.lowerBound), count: n))
                e = to
                continue
            }
            if values.count < n { values = [Float](uninitializedCount: n) }
            try values.withUnsafeMutableBufferPointer {
                try file.dequantize(info, rows: g0..<g1, into: UnsafeMutableBufferPointer(rebasing: $0[0..<n]))
            }
            values.withUnsafeBufferPointer {
                (out + (e - elements.lowerBound)).update(from: $0.baseAddress! + (e - g0 * rowLength), count: to - e)
            }
            e = to
        }
    }
}
