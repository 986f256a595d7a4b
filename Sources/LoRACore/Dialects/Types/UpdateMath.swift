import SafeTensors

/// Small dense products for the update types, in the two precisions they are computed in.
///
/// The fp32 product sums over the inner dimension in order with one fused multiply-add per term,
/// starting from zero: the order of lora-tool's merge kernel, which gives torch's fp32 `a @ b`
/// bit for bit on the fixtures. The fp64 product is the independent one verify uses.
enum UpdateMath {
    /// Row-major (rows × inner) · (inner × cols) in fp32, FMAs over the inner dimension in order.
    static func product(_ a: [Float], _ b: [Float], rows: Int, inner: Int, cols: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        for i in 0..<rows {
            for j in 0..<cols {
                var acc: Float = 0
                for k in 0..<inner { acc = acc.addingProduct(a[i * inner + k], b[k * cols + j]) }
                out[i * cols + j] = acc
            }
        }
        return out
    }

    /// The same product in fp64.
    static func product(_ a: [Double], _ b: [Double], rows: Int, inner: Int, cols: Int) -> [Double] {
        var out = [Double](repeating: 0, count: rows * cols)
        for i in 0..<rows {
            for j in 0..<cols {
                var acc = 0.0
                for k in 0..<inner { acc += a[i * inner + k] * b[k * cols + j] }
                out[i * cols + j] = acc
            }
        }
        return out
    }

    /// A 2-D view of a stored factor: (shape[0], product of the rest).
    static func flat(_ shape: [Int]) -> (rows: Int, cols: Int)? {
        guard shape.count >= 2 else { return nil }
        return (shape[0], shape.dropFirst().reduce(1, *))
    }

    /// A factor's values in fp32 (F32, F16 or BF16 storage), its mapped pages released once read.
    /// - Throws: `LoRACoreError.invalidModule` for another dtype.
    static func floats(_ checkpoint: Checkpoint, _ name: String, module: String) throws -> [Float] {
        guard let info = checkpoint.info(name), TensorData.format(info.dtype) != nil else {
            throw LoRACoreError.invalidModule(
                module: module, detail: "tensor '\(name)' has dtype \(checkpoint.info(name)?.dtype.rawValue ?? "?"); factors must be F32, F16 or BF16")
        }
        defer { checkpoint.release(name) }
        return try TensorData.floats(checkpoint, name)
    }

    /// The flat shapes of `roles` in `tensors`, or an error naming the first missing or
    /// non-matrix one.
    static func shapes(_ roles: [String], in tensors: [String: TensorInfo], module: String, type: String) throws -> [String: (rows: Int, cols: Int)] {
        var out: [String: (rows: Int, cols: Int)] = [:]
        for role in roles {
            guard let info = tensors[role] else {
                throw LoRACoreError.invalidModule(module: module, detail: "\(type) module has no \(role) (has \(tensors.keys.sorted().joined(separator: ", ")))")
            }
            guard TensorData.format(info.dtype) != nil else {
                throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(info.name)' has dtype \(info.dtype.rawValue); factors must be F32, F16 or BF16")
            }
            guard let f = flat(info.shape), f.rows > 0, f.cols > 0 else {
                throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(info.name)' has shape \(info.shape); expected a non-empty matrix")
            }
            out[role] = f
        }
        return out
    }
}
