/// The `BPE` model of a HF `tokenizer.json` (tokenizers `models/bpe`): a vocabulary, ranked merges, byte
/// fallback to `<0xXX>` tokens, unknown-token fusing.
///
/// Encoding a word follows `BPE::merge_word` then `Word::merge_all`: each Unicode scalar becomes its vocab id,
/// else (byte_fallback) one `<0xXX>` id per UTF-8 byte when all of them exist, else `unk` (runs fused when
/// fuse_unk); then the lowest-rank merge is applied repeatedly, ties to the leftmost, with a heap and lazy
/// invalidation.
public final class BPEModel: @unchecked Sendable {
    /// Token bytes -> id.
    let vocab: [[UInt8]: Int]
    /// id -> token bytes (nil for ids the vocab does not use).
    let idToToken: [[UInt8]?]
    /// Tokens that are exactly one scalar, by scalar value (the hot lookup while encoding).
    private let charIds: [UInt32: Int32]
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    private let merges: [UInt64: UInt64]
    private let byteIds: [Int32]
    let unkId: Int32?
    let fuseUnk: Bool
    let byteFallback: Bool
    let ignoreMerges: Bool
    let continuingSubwordPrefix: [UInt8]?
    let endOfWordSuffix: [UInt8]?

    var vocabCount: Int { vocab.count }

    /// - Parameters:
    ///   - vocab: (token, id) pairs.
    ///   - merges: (left, right) pairs by rank (index = rank).
    init(vocab pairs: [([UInt8], Int)], merges mergeList: [([UInt8], [UInt8])], unkToken: [UInt8]?,
         fuseUnk: Bool, byteFallback: Bool, ignoreMerges: Bool = false,
         continuingSubwordPrefix: [UInt8]? = nil, endOfWordSuffix: [UInt8]? = nil, path: String) throws {
        var v: [[UInt8]: Int] = [:]
        v.reserveCapacity(pairs.count)
        var maxId = -1
        for (t, id) in pairs {
            guard id >= 0, id < Int(Int32.max) else {
                throw TokenizerError.invalidFormat(path: path, reason: "model.vocab: bad id \(id) for \"\(string(t))\"")
            }
            v[t] = id
            maxId = max(maxId, id)
        }
        var rev = [[UInt8]?](repeating: nil, count: maxId + 1)
        var chars: [UInt32: Int32] = [:]
        for (t, id) in v {
            rev[id] = t
            if !t.isEmpty, utf8Length(t[0]) == t.count {
                chars[scalarAt(t, 0).0] = Int32(id)
            }
        }
        var m: [UInt64: UInt64] = [:]
        m.reserveCapacity(mergeList.count)
        for (rank, (a, b)) in mergeList.enumerated() {
            guard let ia = v[a] else {
                throw TokenizerError.invalidFormat(path: path, reason: "model.merges[\(rank)]: token \"\(string(a))\" is not in the vocab")
            }
            guard let ib = v[b] else {
                throw TokenizerError.invalidFormat(path: path, reason: "model.merges[\(rank)]: token \"\(string(b))\" is not in the vocab")
            }
            let ab = a + b
            guard let inew = v[ab] else {
                throw TokenizerError.invalidFormat(path: path, reason: "model.merges[\(rank)]: merged token \"\(string(ab))\" is not in the vocab")
            }
            m[UInt64(ia) << 32 | UInt64(ib)] = UInt64(rank) << 32 | UInt64(inew)
        }
        var bids = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = v[byteTokenName(UInt8(b))] { bids[b] = Int32(id) }
        }
        if let u = unkToken {
            guard let id = v[u] else {
                throw TokenizerError.invalidFormat(path: path, reason: "model.unk_token \"\(string(u))\" is not in the vocab")
            }
            unkId = Int32(id)
        } else {
            unkId = nil
        }
        vocab = v
        idToToken = rev
        charIds = chars
        merges = m
        byteIds = bids
        self.fuseUnk = fuseUnk
        self.byteFallback = byteFallback
        self.ignoreMerges = ignoreMerges
        self.continuingSubwordPrefix = continuingSubwordPrefix
        self.endOfWordSuffix = endOfWordSuffix
    }

    func token(_ id: Int) -> [UInt8]? { id >= 0 && id < idToToken.count ? idToToken[id] : nil }

    /// Appends the ids of one pre-tokenized word.
    func tokenize(_ w: [UInt8], into out: inout [Int]) {
        if w.isEmpty { return }
        if ignoreMerges, let id = vocab[w] { out.append(id); return }

        var ids: [Int32] = []
        ids.reserveCapacity(w.count)
        var pendingUnk = false
        let plain = continuingSubwordPrefix == nil && endOfWordSuffix == nil
        var i = 0
        while i < w.count {
            let (scalar, n) = scalarAt(w, i)
            let isFirst = i == 0, isLast = i + n == w.count
            var found: Int32? = nil
            var s: [UInt8] = []
            if plain {
                found = charIds[scalar]
            } else {
                if !isFirst, let p = continuingSubwordPrefix { s += p }
                s += w[i..<(i + n)]
                if isLast, let x = endOfWordSuffix { s += x }
                if let id = vocab[s] { found = Int32(id) }
            }
            if let id = found {
                if pendingUnk, let u = unkId { ids.append(u); pendingUnk = false }
                ids.append(id)
            } else {
                let raw: ArraySlice<UInt8> = plain ? w[i..<(i + n)] : s[...]
                if byteFallback, raw.allSatisfy({ byteIds[Int($0)] >= 0 }) {
                    // Like the Rust code, a byte-fallback char does not flush a pending unk.
                    for b in raw { ids.append(byteIds[Int(b)]) }
                } else if let u = unkId {
                    if pendingUnk && !fuseUnk { ids.append(u) }
                    pendingUnk = true
                }
            }
            i += n
        }
        if pendingUnk, let u = unkId { ids.append(u) }
        mergeAll(&ids)
        for id in ids { out.append(Int(id)) }
    }

    /// `Word::merge_all` without dropout.
    private func mergeAll(_ c: inout [Int32]) {
        let n = c.count
        if n < 2 || merges.isEmpty { return }
        var prev = [Int32](repeating: -1, count: n)
        var next = [Int32](repeating: -1, count: n)
        var alive = [Bool](repeating: true, count: n)
        for k in 0..<n {
            prev[k] = Int32(k - 1)
            next[k] = k + 1 < n ? Int32(k + 1) : -1
        }
        var heap = KeyHeap(capacity: n)
        for k in 0..<(n - 1) {
            if let m = merges[UInt64(UInt32(bitPattern: c[k])) << 32 | UInt64(UInt32(bitPattern: c[k + 1]))] {
                heap.push((m >> 32) << 32 | UInt64(k), Int32(truncatingIfNeeded: m & 0xFFFF_FFFF))
            }
        }
        while let top = heap.pop() {
            let pos = Int(top.key & 0xFFFF_FFFF)
            if !alive[pos] { continue }
            let nx = next[pos]
            if nx < 0 { continue }
            let r = Int(nx)
            // Expired entry unless the current pair still merges into the same id.
            guard let m = merges[UInt64(UInt32(bitPattern: c[pos])) << 32 | UInt64(UInt32(bitPattern: c[r]))],
                  Int32(truncatingIfNeeded: m & 0xFFFF_FFFF) == top.value else { continue }
            c[pos] = top.value
            alive[r] = false
            let rn = next[r]
            next[pos] = rn
            if rn >= 0 { prev[Int(rn)] = Int32(pos) }
            let p = prev[pos]
            if p >= 0, let m2 = merges[UInt64(UInt32(bitPattern: c[Int(p)])) << 32 | UInt64(UInt32(bitPattern: c[pos]))] {
                heap.push((m2 >> 32) << 32 | UInt64(p), Int32(truncatingIfNeeded: m2 & 0xFFFF_FFFF))
            }
            if rn >= 0, let m3 = merges[UInt64(UInt32(bitPattern: c[pos])) << 32 | UInt64(UInt32(bitPattern: c[Int(rn)]))] {
                heap.push((m3 >> 32) << 32 | UInt64(pos), Int32(truncatingIfNeeded: m3 & 0xFFFF_FFFF))
            }
        }
        var k = 0
        for j in 0..<n where alive[j] { c[k] = c[j]; k += 1 }
        c.removeLast(n - k)
    }
}
