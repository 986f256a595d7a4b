import LoRAKernels
import SafeTensors

/// A Gemma norm weight as llama.cpp's converter stores it: w + 1, as F32 (`GemmaModel` /
/// `Gemma2Model.modify_tensors`, Gemma's RMSNorm multiplies by 1 + w).
///
/// The converter widens BF16 tensors to F32 before adding (one F32 rounding of w + 1) and adds to an
/// F16 tensor in F16 (w + 1 rounded to F16, to nearest even), then writes F32; the same steps here.
struct NormShiftedTensor: TensorSource {
    let source: any TensorSource
    var dtype: DType { .float32 }
    var shape: [Int] { source.shape }

    func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        guard !range.isEmpty else { return }
        let e0 = range.lowerBound / 4, e1 = (range.upperBound + 3) / 4
        guard let format = TensorData.format(source.dtype) else {
            throw LoRACoreError.invalidRequest("norm tensor of dtype \(source.dtype.rawValue): only F32, F16 and BF16 are shifted as the converter shifts them")
        }
        let size = format.size
        var raw = [UInt8](uninitializedCount: (e1 - e0) * size)
        try raw.withUnsafeMutableBytes { try source.fill((e0 * size)..<(e1 * size), into: $0.baseAddress!) }
        var values = [Float](uninitializedCount: e1 - e0)
        raw.withUnsafeBytes { r in values.withUnsafeMutableBufferPointer { FloatCodec.decode(r, format: format, into: $0) } }
        for i in values.indices { values[i] += 1 }
        if format == .f16 {
            // Rounded to F16 as torch's half addition rounds, then widened exactly.
            var half = [UInt8](uninitializedCount: values.count * 2)
            values.withUnsafeBufferPointer { v in half.withUnsafeMutableBytes { FloatCodec.encode(v, format: .f16, into: $0) } }
            half.withUnsafeBytes { h in values.withUnsafeMutableBufferPointer { FloatCodec.decode(h, format: .f16, into: $0) } }
        }
        values.withUnsafeBytes {
            destination.copyMemory(from: $0.baseAddress! + (range.lowerBound - e0 * 4), byteCount: range.count)
        }
    }

    func finished() { source.finished() }
}
