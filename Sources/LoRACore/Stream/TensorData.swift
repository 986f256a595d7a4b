import LoRAKernels
import SafeTensors

/// Reading and writing float tensors as float32 arrays.
enum TensorData {
    /// The codec format of a dtype, or nil for dtypes that are not merged (ints, F8, F64, ...).
    static func format(_ dtype: DType) -> FloatCodec.Format? {
        switch dtype {
        case .float32: return .f32
        case .float16: return .f16
        case .bfloat16: return .bf16
        default: return nil
        }
    }

    /// `name` widened to float32 (exact), row-major.
    /// - Throws: `LoRACoreError.invalidModule` for a dtype that is not F32/F16/BF16.
    static func floats(_ ckpt: any TensorStore, _ name: String) throws -> [Float] {
        guard let info = ckpt.info(name) else { throw SafeTensorsError.tensorNotFound(tensor: name, in: ckpt.path) }
        guard let f = format(info.dtype) else {
            throw LoRACoreError.invalidModule(module: name, detail: "dtype \(info.dtype.rawValue) cannot be merged (F32, F16 and BF16 can)")
        }
        let n = info.elementCount ?? 0
        let bytes = try ckpt.bytes(of: name)
        // Uninitialized: decode writes every element, and zero-filling first costs a full pass.
        return [Float](unsafeUninitializedCapacity: n) { buffer, count in
            FloatCodec.decode(bytes, format: f, into: UnsafeMutableBufferPointer(rebasing: buffer[0..<n]))
            count = n
        }
    }

    /// `values` narrowed to `format` bytes (one rounding, nearest even).
    static func encode(_ values: [Float], format: FloatCodec.Format) -> [UInt8] {
        let size = values.count * format.size
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            values.withUnsafeBufferPointer { src in
                FloatCodec.encode(src, format: format, into: UnsafeMutableRawBufferPointer(buffer))
            }
            count = size
        }
    }

    /// The values of `stored` (rounded to `format`) that are ±Inf although their exact value was
    /// finite, and the largest magnitude among those exact values. One pass over `stored`; `exact`
    /// (the fp32 values before rounding, element for element) is asked for only when one is not finite.
    static func overflows(stored: UnsafeRawBufferPointer, format: FloatCodec.Format,
                          exact: () throws -> ArraySlice<Float>) rethrows -> (count: Int, largest: Float) {
        if FloatCodec.allFinite(stored, format: format) { return (0, 0) }
        let n = stored.count / format.size
        let decoded = [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            FloatCodec.decode(stored, format: format, into: buffer)
            initialized = n
        }
        var count = 0, largest: Float = 0
        for (s, x) in zip(decoded, try exact()) where !s.isFinite && x.isFinite {
            count += 1
            largest = max(largest, abs(x))
        }
        return (count, largest)
    }
}
