import Foundation

// FLOP accounting of one training step of PixelLMForCausalLM.forward, per component, counting only matrix
// products and convolutions (2 * M * N * K each: one multiply and one add per term), as the forward computes
// them here:
//   clip              patch conv + the encoder layers that run (max(-select, -mid) - 1 ... i.e. up to the
//                     deepest state used), QKV/out projections, QK^T and PV over all 1 + g^2 tokens, MLP;
//                     once per image
//   mm_projector      Linear(D, 2H), Linear(2H, H) on the (g/2)^2 pooled tokens of every image
//   llm               every LLaMA layer over T' = T - 1 + (g/2)^2 positions of every conversation (q, k, v, o,
//                     QK^T and PV over the full T' x T' square, gate/up/down)
//   lm_head           H x V over every position
//   out_mm_projector  the same MLP as mm_projector over the L levels x g^2 tokens of every decoded image
//   neck              Conv1x1(H -> C) and Conv3x3(C -> C) over L x g^2 positions of every decoded image
//   fcs               Linear(H, H), Linear(H, C) over the N * L gathered rows of every target
//   fusion            (learned only) Linear(N C, C) over K x L
//   decoder           per target and level: the two-way transformer (tokens = 2 + num_multimask_outputs + 1),
//                     the output upscaling ConvT, hypernet MLP 0 and the mask product; per decoded image: the
//                     level-1 upsample_2x ConvT
// Elementwise work, norms, softmax, resizes and the PE features are not counted.
//
// Backward: for every product, dX (same count as the forward) when a gradient has to flow to its input, and
// dW (same count again) when its weight is trained. Attention products (no weights) count dQ and dK (or dP
// and dV) when their inputs need gradients. With the released recipe: nothing for CLIP; mm_projector and
// out_mm_projector dW, and dX only for their second layer (CLIP is frozen); the LLaMA layers dX only (frozen,
// but the gradient flows to embed_tokens and mm_projector); lm_head dX + dW; the neck dX only; fcs and the
// decoder dX + dW. A trained LLaMA group adds dW to every layer (`lora-target`: the q/v weights only; the LoRA
// adapters themselves are not modelled).

/// The shape of a micro-batch for FLOP accounting.
public struct FLOPBatchShape: Sendable {
    public var images: Int
    public var conversations: Int
    /// Padded token length T of the conversations (with the one image placeholder).
    public var sequenceLength: Int
    /// Masks decoded in the batch (K summed over the conversations).
    public var targets: Int
    /// Images that have at least one target (the neck and decoder run only for them); default min(images, targets).
    public var decodedImages: Int

    public init(images: Int, conversations: Int, sequenceLength: Int, targets: Int, decodedImages: Int? = nil) {
        self.images = images
        self.conversations = conversations
        self.sequenceLength = sequenceLength
        self.targets = targets
        self.decodedImages = decodedImages ?? min(images, targets)
    }
}

public struct ComponentFLOPs: Sendable {
    public let name: String
    public let forward: Int
    public let backward: Int
    public var total: Int { forward + backward }
}

public struct FLOPReport: Sendable {
    public let components: [ComponentFLOPs]
    public var forward: Int { components.reduce(0) { $0 + $1.forward } }
    public var backward: Int { components.reduce(0) { $0 + $1.backward } }
    public var total: Int { forward + backward }

    public subscript(_ name: String) -> ComponentFLOPs? { components.first { $0.name == name } }

    public var description: String {
        func g(_ v: Int) -> String { String(format: "%10.3f", Double(v) / 1e9) }
        var lines = ["component           forward GF  backward GF"]
        for c in components { lines.append(c.name.padding(toLength: 18, withPad: " ", startingAt: 0) + g(c.forward) + "  " + g(c.backward)) }
        lines.append("total".padding(toLength: 18, withPad: " ", startingAt: 0) + g(forward) + "  " + g(backward))
        return lines.joined(separator: "\n")
    }
}

public enum FLOPCounter {
    /// 2 * m * n * k.
    @inlinable public static func matmul(_ m: Int, _ n: Int, _ k: Int) -> Int { 2 * m * n * k }

    /// Accumulates forward and backward counts of one component.
    struct Tally {
        var forward = 0, backward = 0
        /// A product of forward cost `f`; `dx`: gradient to its input needed; `dw`: its weight is trained.
        mutating func op(_ f: Int, dx: Bool, dw: Bool) {
            forward += f
            backward += (dx ? f : 0) + (dw ? f : 0)
        }
        /// An attention product (two activations): backward 2 f when gradients flow.
        mutating func act(_ f: Int, grad: Bool) {
            forward += f
            backward += grad ? 2 * f : 0
        }
        mutating func linear(tokens m: Int, _ inF: Int, _ outF: Int, dx: Bool, dw: Bool) {
            op(FLOPCounter.matmul(m, outF, inF), dx: dx, dw: dw)
        }
    }

    /// Forward and backward FLOPs per component for `batch`, with `trainable` groups trained (default the
    /// released recipe).
    public static func count(config c: PixelLMConfig, batch: FLOPBatchShape,
                             trainable: Set<ParameterGroup> = ParameterTable.releasedTrainableGroups) -> FLOPReport {
        let vc = c.visionConfig, dc = c.decoderConfig
        let g = c.visionGrid, D = vc.hiddenSize, H = c.hiddenSize, V = c.vocabSize, C = dc.promptEmbedDim
        let n = c.imageTokenCount, L = c.imageFeatureScaleNum, N = c.segTokenNum
        let B = batch.images, Bc = batch.conversations, K = batch.targets, Bd = batch.decodedImages
        let Tx = batch.sequenceLength - 1 + n
        let clipTrained = trainable.contains(.clip), projTrained = trainable.contains(.projector)
        let llmTrained = trainable.contains(.llm), loraTrained = trainable.contains(.loraTarget)
        var out: [ComponentFLOPs] = []

        // CLIP
        var t = Tally()
        let Tv = 1 + g * g
        // hidden state index of a selection (negative counts from the end of the numLayers + 1 states);
        // the tower runs up to the deeper of the two states (both are computed even with one level)
        func stateIndex(_ k: Int) -> Int { k < 0 ? vc.numHiddenLayers + 1 + k : k }
        let runLayers = max(stateIndex(c.mmVisionSelectLayer), stateIndex(c.mmVisionMidLayer))
        t.linear(tokens: B * g * g, vc.numChannels * vc.patchSize * vc.patchSize, D, dx: false, dw: clipTrained)
        for _ in 0..<runLayers {
            for _ in 0..<4 { t.linear(tokens: B * Tv, D, D, dx: clipTrained, dw: clipTrained) }
            t.act(B * matmul(Tv, Tv, D), grad: clipTrained)
            t.act(B * matmul(Tv, D, Tv), grad: clipTrained)
            t.linear(tokens: B * Tv, D, vc.intermediateSize, dx: clipTrained, dw: clipTrained)
            t.linear(tokens: B * Tv, vc.intermediateSize, D, dx: clipTrained, dw: clipTrained)
        }
        out.append(ComponentFLOPs(name: "clip", forward: t.forward, backward: t.backward))

        // mm_projector
        t = Tally()
        t.linear(tokens: B * n, D, 2 * H, dx: clipTrained, dw: projTrained)
        t.linear(tokens: B * n, 2 * H, H, dx: clipTrained || projTrained, dw: projTrained)
        out.append(ComponentFLOPs(name: "mm_projector", forward: t.forward, backward: t.backward))

        // LLaMA layers
        t = Tally()
        let inputGrad = clipTrained || projTrained || trainable.contains(.embed)
        let hd = c.headDim, kv = c.numKeyValueHeads * hd, I = c.intermediateSize
        let M = Bc * Tx
        let anyLayerTrained = llmTrained || loraTrained
        for i in 0..<c.numHiddenLayers {
            // products reading the layer input need dX when something below is trained; the others also
            // when this layer has trained weights before them
            let dxIn = inputGrad || (anyLayerTrained && i > 0), dx = inputGrad || anyLayerTrained
            t.linear(tokens: M, H, c.numAttentionHeads * hd, dx: dxIn, dw: anyLayerTrained)          // q
            t.linear(tokens: M, H, kv, dx: dxIn, dw: llmTrained)                                      // k
            t.linear(tokens: M, H, kv, dx: dxIn, dw: anyLayerTrained)                                 // v
            t.act(Bc * matmul(Tx, Tx, c.numAttentionHeads * hd), grad: dx)
            t.act(Bc * matmul(Tx, c.numAttentionHeads * hd, Tx), grad: dx)
            t.linear(tokens: M, c.numAttentionHeads * hd, H, dx: dx, dw: llmTrained)                  // o
            t.linear(tokens: M, H, I, dx: dx, dw: llmTrained)                                         // gate
            t.linear(tokens: M, H, I, dx: dx, dw: llmTrained)                                         // up
            t.linear(tokens: M, I, H, dx: dx, dw: llmTrained)                                         // down
        }
        out.append(ComponentFLOPs(name: "llm", forward: t.forward, backward: t.backward))
        let llmBackward = inputGrad || anyLayerTrained

        // lm_head
        t = Tally()
        t.linear(tokens: M, H, V, dx: llmBackward, dw: trainable.contains(.lmHead))
        out.append(ComponentFLOPs(name: "lm_head", forward: t.forward, backward: t.backward))

        // out_mm_projector
        t = Tally()
        t.linear(tokens: Bd * L * g * g, D, 2 * H, dx: clipTrained, dw: projTrained)
        t.linear(tokens: Bd * L * g * g, 2 * H, H, dx: clipTrained || projTrained, dw: projTrained)
        out.append(ComponentFLOPs(name: "out_mm_projector", forward: t.forward, backward: t.backward))

        // neck
        t = Tally()
        let neckTrained = trainable.contains(.neck)
        t.op(matmul(Bd * L * g * g, C, H), dx: clipTrained || projTrained, dw: neckTrained)
        t.op(matmul(Bd * L * g * g, C, 9 * C), dx: clipTrained || projTrained || neckTrained, dw: neckTrained)
        out.append(ComponentFLOPs(name: "neck", forward: t.forward, backward: t.backward))

        // text_hidden_fcs
        t = Tally()
        let fcsTrained = trainable.contains(.fcs)
        t.linear(tokens: K * N * L, H, H, dx: llmBackward, dw: fcsTrained)
        t.linear(tokens: K * N * L, H, c.outDim, dx: llmBackward || fcsTrained, dw: fcsTrained)
        out.append(ComponentFLOPs(name: "fcs", forward: t.forward, backward: t.backward))

        if c.tokenFusion == "learned" {
            t = Tally()
            t.linear(tokens: K * L, N * C, C, dx: llmBackward || fcsTrained, dw: trainable.contains(.fusion))
            out.append(ComponentFLOPs(name: "fusion", forward: t.forward, backward: t.backward))
        }

        // decoder
        t = Tally()
        let decTrained = trainable.contains(.decoder)
        let decDX = decTrained || fcsTrained || llmBackward || neckTrained || projTrained || clipTrained
        let Tt = 2 + dc.numMultimaskOutputs + 1, ci = C / dc.attentionDownsampleRate
        func attention(_ q: Int, _ k: Int, inner: Int) {
            t.linear(tokens: K * q, C, inner, dx: decDX, dw: decTrained)
            t.linear(tokens: K * k, C, inner, dx: decDX, dw: decTrained)
            t.linear(tokens: K * k, C, inner, dx: decDX, dw: decTrained)
            t.act(K * matmul(q, k, inner), grad: decDX)
            t.act(K * matmul(q, inner, k), grad: decDX)
            t.linear(tokens: K * q, inner, C, dx: decDX, dw: decTrained)
        }
        for l in 0..<L {
            let side = g << l, P = side * side
            if l > 0 { t.op(Bd * matmul(g * g * 4, C, C), dx: decDX, dw: decTrained) }      // upsample_2x ConvT, per image
            for _ in 0..<dc.transformerDepth {
                attention(Tt, Tt, inner: C)                                                   // token self-attention
                attention(Tt, P, inner: ci)                                                   // tokens -> image
                t.linear(tokens: K * Tt, C, dc.mlpDim, dx: decDX, dw: decTrained)
                t.linear(tokens: K * Tt, dc.mlpDim, C, dx: decDX, dw: decTrained)
                attention(P, Tt, inner: ci)                                                   // image -> tokens
            }
            attention(Tt, P, inner: ci)                                                       // final tokens -> image
            t.op(K * matmul(P * 4, C / 8, C), dx: decDX, dw: decTrained)                      // output upscaling ConvT
            t.linear(tokens: K, C, C, dx: decDX, dw: decTrained)                              // hypernet MLP 0
            t.linear(tokens: K, C, C, dx: decDX, dw: decTrained)
            t.linear(tokens: K, C, C / 8, dx: decDX, dw: decTrained)
            t.act(K * matmul(1, 4 * P, C / 8), grad: decDX)                                   // mask = w0 @ up
        }
        out.append(ComponentFLOPs(name: "decoder", forward: t.forward, backward: t.backward))
        return FLOPReport(components: out)
    }
}
