import LoRAKernels
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

    /// Rows `[r0, r0 + count)` of left · right, left (· × inner) and right (inner × cols) row-major,
    /// in fp32 by the merge kernel (`FusedMerge` on a zero block, coefficient 1): each element summed
    /// over the inner dimension in order with FMAs, so exactly `product`'s rows, vectorized.
    static func productRows(_ left: [Float], _ right: [Float], r0: Int, count: Int, inner: Int, cols: Int) -> [Float] {
        var out = [Float](repeating: 0, count: count * cols)
        guard count > 0, cols > 0 else { return out }
        let isa = (try? Kernels.instructionSet()) ?? .best
        out.withUnsafeMutableBytes { o in
            left.withUnsafeBufferPointer { l in
                right.withUnsafeBufferPointer { r in
                    _ = FusedMerge.rows(UnsafeRawBufferPointer(o), input: .f32, into: o, output: .f32, rows: count, cols: cols,
                                        b: UnsafeBufferPointer(rebasing: l[(r0 * inner)..<((r0 + count) * inner)]), rank: inner,
                                        a: r, leadingA: cols, coefficient: 1, using: isa)!
                }
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

    /// a⁻¹·rhs for b×b row-major matrices in fp64, by Gauss–Jordan elimination with partial
    /// pivoting (rows swapped to the largest magnitude in each column, every other row eliminated,
    /// then each row divided by its pivot). Nil when a pivot is zero or below 2⁻⁴⁰ of the column's
    /// largest original entry: a numerically singular a, whose inverse would be noise.
    static func solve(_ a: [Double], _ rhs: [Double], b: Int) -> [Double]? {
        var a = a, x = rhs
        let scale = (0..<b).map { col in (0..<b).reduce(0.0) { max($0, abs(a[$1 * b + col])) } }
        for col in 0..<b {
            let pivot = (col..<b).max { abs(a[$0 * b + col]) < abs(a[$1 * b + col]) }!
            guard abs(a[pivot * b + col]) > scale[col] * 0x1p-40 else { return nil }
            if pivot != col {
                for j in 0..<b {
                    a.swapAt(pivot * b + j, col * b + j)
                    x.swapAt(pivot * b + j, col * b + j)
                }
            }
            for row in 0..<b where row != col {
                let f = a[row * b + col] / a[col * b + col]
                if f == 0 { continue }
                for j in 0..<b {
                    a[row * b + j] -= f * a[col * b + j]
                    x[row * b + j] -= f * x[col * b + j]
                }
            }
        }
        for i in 0..<b { for j in 0..<b { x[i * b + j] /= a[i * b + i] } }
        return x
    }

    /// The b×b identity, row-major.
    static func identity(_ b: Int) -> [Double] {
        var m = [Double](repeating: 0, count: b * b)
        for i in 0..<b { m[i * b + i] = 1 }
        return m
    }

    /// The transpose of a b×b row-major matrix.
    static func transpose(_ m: [Double], b: Int) -> [Double] {
        var t = m
        for i in 0..<b { for j in 0..<b { t[j * b + i] = m[i * b + j] } }
        return t
    }

    /// A Tucker core rebuilt into a convolution kernel, ΔW[p][q][s] = Σᵢ Σⱼ t[i][j][s]·wa[i][p]·wb[j][r],
    /// as the einsum of LyCORIS 4.1.3 and PEFT 0.21.2 computes it in fp32 (torch contracts left to
    /// right without opt_einsum, each contraction a sum in index order, FMAs here):
    /// - `contractOutFirst` false (LoHa, `"i j k l, j r, i p -> p r k l"` on (t, w_b, w_a)): the core's
    ///   second index with `wb` first, Tᵢ[s][q] = Σⱼ t[i][j][s]·wb[j][q], then Σᵢ Tᵢ[s][q]·wa[i][p];
    /// - `contractOutFirst` true (LoKr, `"i j k l, i p, j r -> p r k l"` on (t, w_a, w_b)): the first
    ///   index with `wa` first, Tⱼ[s][p] = Σᵢ t[i][j][s]·wa[i][p], then Σⱼ Tⱼ[s][p]·wb[j][q].
    /// - Parameters:
    ///   - t: the core (r, r, kernel) row-major, `spatial` = the kernel's element count.
    ///   - wa: (r, out) and `wb` (r, in), row-major.
    /// - Returns: the (out, in·spatial) flat view of the (out, in, kernel) weight.
    static func tucker<T: BinaryFloatingPoint>(_ t: [T], spatial: Int, wa: [T], wb: [T], rank r: Int, out: Int, in n: Int, contractOutFirst: Bool) -> [T] {
        var result = [T](repeating: 0, count: out * n * spatial)
        // First: the core's index k (LoHa: its second, with wb; LoKr: its first, with wa), keeping the other.
        let (x, xn, y, yn) = contractOutFirst ? (wa, out, wb, n) : (wb, n, wa, out)
        func core(keep: Int, k: Int, s: Int) -> T { contractOutFirst ? t[(k * r + keep) * spatial + s] : t[(keep * r + k) * spatial + s] }
        var tmp = [T](repeating: 0, count: r * spatial * xn)  // [keep][s][x column]
        for keep in 0..<r { for s in 0..<spatial { for c in 0..<xn {
            var acc: T = 0
            for k in 0..<r { acc = fma(core(keep: keep, k: k, s: s), x[k * xn + c], acc) }
            tmp[(keep * spatial + s) * xn + c] = acc
        } } }
        for p in 0..<out { for q in 0..<n { for s in 0..<spatial {
            let (xc, yc) = contractOutFirst ? (p, q) : (q, p)
            var acc: T = 0
            for keep in 0..<r { acc = fma(tmp[(keep * spatial + s) * xn + xc], y[keep * yn + yc], acc) }
            result[(p * n + q) * spatial + s] = acc
        } } }
        return result
    }

    /// a·b + c rounded once (fused), in T's precision.
    private static func fma<T: BinaryFloatingPoint>(_ a: T, _ b: T, _ c: T) -> T { c.addingProduct(a, b) }

    /// Checks a Tucker module's shapes: the core `t` (r, r, kernel…) with `wa` (r, out) and `wb` (r, in).
    /// - Returns: (rank, out, in, kernel).
    /// - Throws: `LoRACoreError.invalidModule` naming the tensors that do not fit.
    static func tuckerShapes(t: String, wa: String, wb: String, in tensors: [String: TensorInfo], module: String, type: String) throws
        -> (rank: Int, out: Int, in: Int, kernel: [Int])
    {
        for role in [t, wa, wb] where tensors[role] == nil {
            throw LoRACoreError.invalidModule(module: module, detail: "\(type) module with a Tucker core has no \(role) (has \(tensors.keys.sorted().joined(separator: ", ")))")
        }
        _ = try shapes([t, wa, wb], in: tensors, module: module, type: type)
        let ts = tensors[t]!.shape, a = tensors[wa]!.shape, b = tensors[wb]!.shape
        guard ts.count >= 3, ts[0] == ts[1], a.count == 2, b.count == 2, a[0] == ts[0], b[0] == ts[0] else {
            throw LoRACoreError.invalidModule(
                module: module, detail: "\(type) Tucker factors do not fit: \(t) \(ts) (r, r, kernel…), \(wa) \(a) (r, out), \(wb) \(b) (r, in)")
        }
        return (ts[0], a[1], b[1], Array(ts.dropFirst(2)))
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
