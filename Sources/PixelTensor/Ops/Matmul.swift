// Matrix products on OpenBLAS sgemm, with PyTorch conventions (weights [out, in], row-major).
//   forward   Y  = X W^T            sgemm(N, T)
//   backward  dX += dY W            sgemm(N, N, beta 1)
//             dW += dY^T X          sgemm(T, N, beta 1)
//             db += sum_rows dY

/// A 2-D matrix operand for sgemm: pointer, whether it is transposed in memory, leading dimension.
struct GemmOperand {
    let ptr: UnsafeMutablePointer<Float>
    let trans: Bool
    let ld: Int
    let keep: Tensor   // keeps the memory alive
}

/// Describes the last two dims of `t` as a BLAS operand without copying when they are row- or
/// column-contiguous. `batchStride` is the stride between matrices (0 if broadcast).
func gemmView(_ t: Tensor) -> (Tensor, trans: Bool, ld: Int) {
    let r = t.rank
    let rows = t.shape[r - 2], cols = t.shape[r - 1]
    let sr = t.strides[r - 2], sc = t.strides[r - 1]
    if (sc == 1 || cols == 1) && sr >= max(cols, 1) { return (t, false, max(sr, 1)) }
    if (sr == 1 || rows == 1) && sc >= max(rows, 1) { return (t, true, max(sc, 1)) }
    let c = t.contiguousData()
    return (c, false, max(cols, 1))
}

extension Tensor {
    /// Batched matrix product [..., M, K] x [..., K, N] -> [..., M, N]. Batch dims broadcast; a 2-D
    /// right operand is shared by every batch entry. 1-D operands are not supported: reshape first.
    public func matmul(_ other: Tensor) -> Tensor {
        let a = self, b = other
        guard a.rank >= 2 && b.rank >= 2 else {
            shapeFailure(ShapeError("matmul", "operands must have rank >= 2, got \(describe(a.shape)) and \(describe(b.shape))"))
        }
        let M = a.dim(-2), K = a.dim(-1), K2 = b.dim(-2), N = b.dim(-1)
        guard K == K2 else {
            shapeFailure(ShapeError("matmul", "inner dimensions differ: \(describe(a.shape)) x \(describe(b.shape))"))
        }
        let batch = checked { try Shapes.broadcast(Array(a.shape.dropLast(2)), Array(b.shape.dropLast(2)), op: "matmul") }
        let out = Tensor(empty: batch + [M, N])
        let ea = a.expandBatch(batch), eb = b.expandBatch(batch)
        matmulKernel(ea, transA: false, eb, transB: false, into: out, beta: 0, batch: batch)
        return Autograd.record("matmul", out, inputs: [a, b]) { _, g in
            let gc = g.contiguousData()
            if a.requiresGrad {  // dA += dY B^T, summed over broadcast batch dims
                let da = Tensor.zeros(batch + [M, K])
                matmulKernel(gc, transA: false, eb, transB: true, into: da, beta: 1, batch: batch)
                a.accumulateGrad(reduceToShape(da, a.shape))
            }
            if b.requiresGrad {  // dB += A^T dY
                if b.rank == 2 {
                    // shared 2-D B: one GEMM over all rows: dB += A_flat^T dY_flat
                    let af = ea.contiguousData()
                    let rows = product(batch) * M
                    let db = b.gradBuffer()
                    BLAS.sgemm(transA: true, transB: false, M: K, N: N, K: rows, A: af.ptr, lda: K, B: gc.ptr, ldb: N,
                               beta: 1, C: db.ptr, ldc: N)
                } else {
                    let db = Tensor.zeros(batch + [K, N])
                    matmulKernel(ea, transA: true, gc, transB: false, into: db, beta: 1, batch: batch)
                    b.accumulateGrad(reduceToShape(db, b.shape))
                }
            }
        }
    }

    /// A view of self broadcast over `batch` leading dims (stride 0 where broadcast).
    func expandBatch(_ batch: [Int]) -> Tensor {
        let lead = batch.count - (rank - 2)
        var st = [Int](repeating: 0, count: batch.count)
        for i in 0..<(rank - 2) where shape[i] == batch[i + lead] { st[i + lead] = strides[i] }
        return Tensor(storage: storage, shape: batch + Array(shape.suffix(2)), strides: st + Array(strides.suffix(2)), offset: offset)
    }
}

/// C[b] = op(A[b]) op(B[b]) + beta C[b] for every batch index b; C contiguous.
func matmulKernel(_ a: Tensor, transA: Bool, _ b: Tensor, transB: Bool, into c: Tensor, beta: Float, batch: [Int]) {
    let (av, at, lda) = gemmView(a)
    let (bv, bt, ldb) = gemmView(b)
    let ta = at != transA, tb = bt != transB
    let M = c.dim(-2), N = c.dim(-1)
    let K = transA ? a.dim(-2) : a.dim(-1)
    let nb = product(batch)
    let pa = av.ptr, pb = bv.ptr, pc = c.ptr
    // batch offsets of each operand
    let ra = av.rank, rb = bv.rank
    let sa = Array(av.strides.prefix(ra - 2)), sb = Array(bv.strides.prefix(rb - 2))
    var idx = [Int](repeating: 0, count: batch.count)
    for i in 0..<nb {
        var oa = 0, ob = 0
        for d in 0..<batch.count { oa += idx[d] * sa[d]; ob += idx[d] * sb[d] }
        BLAS.sgemm(transA: ta, transB: tb, M: M, N: N, K: K, A: pa + oa, lda: lda, B: pb + ob, ldb: ldb,
                   beta: beta, C: pc + i * M * N, ldc: N)
        var k = batch.count - 1
        while k >= 0 { idx[k] += 1; if idx[k] < batch[k] { break }; idx[k] = 0; k -= 1 }
    }
}

/// y = x W^T + b for x [..., in], W [out, in], b [out] (torch.nn.functional.linear).
public func linear(_ x: Tensor, _ w: Tensor, _ bias: Tensor? = nil) -> Tensor {
    let inF = x.dim(-1)
    guard w.rank == 2 && w.dim(1) == inF else {
        shapeFailure(ShapeError("linear", "input \(describe(x.shape)) does not match weight \(describe(w.shape)) ([out, in])"))
    }
    let outF = w.dim(0)
    if let bias, bias.shape != [outF] {
        shapeFailure(ShapeError("linear", "bias \(describe(bias.shape)) for weight \(describe(w.shape))"))
    }
    let xc = x.contiguousData()
    let (wv, wt, ldw) = gemmView(w)
    let rows = x.count / max(inF, 1)
    let out = Tensor(empty: Array(x.shape.dropLast()) + [outF])
    let po = out.ptr
    if let bias {
        let pb = bias.contiguousData().ptr
        for r in 0..<rows { (po + r * outF).update(from: pb, count: outF) }
    }
    // Y = X W^T: W stored [out, in] row-major is op(B) = W^T with trans = true
    BLAS.sgemm(transA: false, transB: !wt, M: rows, N: outF, K: inF, A: xc.ptr, lda: inF, B: wv.ptr, ldb: ldw,
               beta: bias == nil ? 0 : 1, C: po, ldc: outF)
    var inputs = [x, w]
    if let bias { inputs.append(bias) }
    return Autograd.record("linear", out, inputs: inputs) { _, g in
        let gc = g.contiguousData()
        if x.requiresGrad {  // dX += dY W
            let dx = x.gradBuffer()
            BLAS.sgemm(transA: false, transB: wt, M: rows, N: inF, K: outF, A: gc.ptr, lda: outF, B: wv.ptr, ldb: ldw,
                       beta: 1, C: dx.ptr, ldc: inF)
        }
        if w.requiresGrad {  // dW += dY^T X
            let dw = w.gradBuffer()
            BLAS.sgemm(transA: true, transB: false, M: outF, N: inF, K: rows, A: gc.ptr, lda: outF, B: xc.ptr, ldb: inF,
                       beta: 1, C: dw.ptr, ldc: inF)
        }
        if let bias, bias.requiresGrad {  // db += sum over rows of dY
            let db = bias.gradBuffer().ptr
            let pg = gc.ptr
            for r in 0..<rows { let row = pg + r * outF; for j in 0..<outF { db[j] += row[j] } }
        }
    }
}
