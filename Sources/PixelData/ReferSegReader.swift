// refclef / refcoco / refcoco+ / refcocog on the REFER layout (utils/refer.py, utils/refer_seg_dataset.py):
//
//   <datasetDir>/refer_seg/<name>/refs(<splitBy>).p   pickle: list of refs {ref_id, ann_id, image_id, split,
//                                                     sentences: [{sent, ...}], ...}; splitBy "umd" for
//                                                     refcocog, "unc" for the others
//   <datasetDir>/refer_seg/<name>/instances.json      COCO {images, annotations, categories}
//   <datasetDir>/refer_seg/images/saiapr_tc-12/<file_name>               refclef images
//   <datasetDir>/refer_seg/images/mscoco/images/train2014/<file_name>    refcoco, refcoco+, refcocog images
//
// One item per image that has refs in the split (ascending image id); its sentences (one candidate per
// sentence, all sentences of all its refs) are sampled and allocated into questions (Allocation), and each
// target's mask is its ref's annotation (polygons or RLE, parts summed then binarised, at the image size
// instances.json gives).
import Foundation
import PixelTensor

public final class ReferSegReader: DatasetReader {
    public let dataset = "refer_seg"
    public let subset: String
    public let split: String
    public let splitBy: String
    public let options: ReaderOptions
    public let refsFile: String
    public let instancesFile: String
    public let imageDir: String
    public private(set) var indexSkips = SkipLog()

    struct Sentence { let text: String; let refID: Int; let annID: Int; let sentID: Int? }
    struct ImageInfo { let fileName: String; let height: Int; let width: Int }

    /// Image ids with refs in the split, ascending.
    let imageIDs: [Int]
    let sentences: [Int: [Sentence]]
    let images: [Int: ImageInfo]
    /// Parsed segmentations of the annotations the split's refs use (or why they are unusable).
    let segmentations: [Int: Result<COCOSegmentation, MaskError>]

    public static let names = ["refclef", "refcoco", "refcoco+", "refcocog"]

    public var count: Int { imageIDs.count }

    /// The REFER split schemes a `refs(<splitBy>).p` may be named by.
    public static let splitSchemes = ["unc", "umd", "google", "berkeley"]

    /// `splitBy` (the file `refs(<splitBy>).p`): default "umd" for refcocog, else "unc" (the reference's training choice).
    public init(datasetDir: String, name: String, split: String = "train", splitBy: String? = nil,
                options: ReaderOptions = ReaderOptions()) throws {
        let root = datasetDir + "/refer_seg"
        guard Self.names.contains(name) else {
            throw DatasetError(file: root + "/" + name, "unknown refer_seg dataset \"\(name)\" (known: \(Self.names.joined(separator: ", ")))")
        }
        subset = name
        self.split = split
        self.options = options
        let scheme = splitBy ?? (name == "refcocog" ? "umd" : "unc")
        guard Self.splitSchemes.contains(scheme) else {
            throw DatasetError(file: root + "/" + name, "unknown REFER split scheme \"\(scheme)\" (known: \(Self.splitSchemes.joined(separator: ", ")))")
        }
        self.splitBy = scheme
        refsFile = "\(root)/\(name)/refs(\(scheme)).p"
        instancesFile = "\(root)/\(name)/instances.json"
        imageDir = name == "refclef" ? root + "/images/saiapr_tc-12" : root + "/images/mscoco/images/train2014"

        let rf = refsFile
        // refs
        let refsValue: PickleValue
        do {
            refsValue = try PlainPickle.load(try Image.readFile(rf), file: rf)
        } catch let e as PickleError {
            throw DatasetError(file: rf, "byte \(e.offset): \(e.message)")
        } catch let e as ImageError {
            throw DatasetError(file: rf, e.message)
        }
        guard let refs = refsValue.items else { throw DatasetError(file: rf, "holds \(refsValue.typeName), not a list of refs") }
        var sentences: [Int: [Sentence]] = [:]
        var annIDs = Set<Int>()
        for (i, ref) in refs.enumerated() {
            guard ref.entries != nil else { throw DatasetError(file: rf, "ref \(i) is \(ref.typeName), not a dict") }
            func int(_ k: String) throws -> Int {
                guard let v = ref[k]?.intValue else {
                    throw DatasetError(file: rf, "ref \(i): \"\(k)\" is \(ref[k]?.typeName ?? "missing"), not an int")
                }
                return v
            }
            let refID = try int("ref_id"), annID = try int("ann_id"), imageID = try int("image_id")
            guard let refSplit = ref["split"]?.stringValue else {
                throw DatasetError(file: rf, "ref \(i) (ref_id \(refID)): \"split\" is \(ref["split"]?.typeName ?? "missing"), not a string")
            }
            guard let sents = ref["sentences"]?.items else {
                throw DatasetError(file: rf, "ref \(i) (ref_id \(refID)): \"sentences\" is \(ref["sentences"]?.typeName ?? "missing"), not a list")
            }
            guard Self.inSplit(refSplit, split) else { continue }
            var list = sentences[imageID] ?? []
            for (j, s) in sents.enumerated() {
                guard let text = s["sent"]?.stringValue else {
                    throw DatasetError(file: rf, "ref \(i) (ref_id \(refID)) sentence \(j): \"sent\" is \(s["sent"]?.typeName ?? "missing"), not a string")
                }
                list.append(Sentence(text: text, refID: refID, annID: annID, sentID: s["sent_id"]?.intValue))
            }
            sentences[imageID] = list
            annIDs.insert(annID)
        }
        self.sentences = sentences
        imageIDs = sentences.keys.sorted()

        // instances
        // instances.json is mapped and its lists parsed one element at a time (COCO-sized files stay small).
        let inst = instancesFile
        let data = try ReaderJSON.mapped(inst)
        let members: [String: Range<Int>]
        do { members = try ReaderJSON.objectMemberRanges(data, file: inst) } catch let e as DatasetError where e.message.hasPrefix("the top level") {
            throw DatasetError(file: inst, "is not a dict")
        }
        let wanted = Set(imageIDs)
        var images: [Int: ImageInfo] = [:]
        try ReaderJSON.forEachElement(ofListAt: "images", in: data, members: members, file: inst) { i, x in
            guard let d = x as? [String: Any], let id = CocoJSON.int(d["id"]) else {
                throw DatasetError(file: inst, "images[\(i)] is not a dict with an integer \"id\"")
            }
            guard wanted.contains(id) else { return }
            guard let f = d["file_name"] as? String, let h = CocoJSON.int(d["height"]), let w = CocoJSON.int(d["width"]), h > 0, w > 0 else {
                throw DatasetError(file: inst, "images[\(i)] (id \(id)) needs \"file_name\" and positive \"height\", \"width\"")
            }
            guard ReaderJSON.staysInside(f) else { throw DatasetError(file: inst, "images[\(i)] (id \(id)): file_name \(f) leaves the image directory") }
            images[id] = ImageInfo(fileName: f, height: h, width: w)
        }
        self.images = images
        var segs: [Int: Result<COCOSegmentation, MaskError>] = [:]
        try ReaderJSON.forEachElement(ofListAt: "annotations", in: data, members: members, file: inst) { i, x in
            guard let d = x as? [String: Any], let id = CocoJSON.int(d["id"]) else {
                throw DatasetError(file: inst, "annotations[\(i)] is not a dict with an integer \"id\"")
            }
            guard annIDs.contains(id) else { return }
            let item = "annotation \(id)"
            guard let s = d["segmentation"] else { segs[id] = .failure(MaskError(item: item, "has no \"segmentation\"")); return }
            do { segs[id] = .success(try COCOSegmentation(json: s, item: item)) } catch let e as MaskError { segs[id] = .failure(e) }
        }
        segmentations = segs
    }

    /// REFER.getRefIds(split:): testA/B/C match refs whose split contains the letter, "test" any test split.
    static func inSplit(_ refSplit: String, _ split: String) -> Bool {
        switch split {
        case "testA", "testB", "testC": return refSplit.contains(split.last!)
        case "test": return refSplit.contains("test")
        default: return refSplit == split
        }
    }

    public func sample(_ index: Int, seed: UInt64) throws -> DataSample {
        guard index >= 0, index < imageIDs.count else {
            throw SampleSkip(file: refsFile, "index \(index) out of range 0..<\(imageIDs.count)")
        }
        let imageID = imageIDs[index]
        guard let info = images[imageID] else {
            throw SampleSkip(file: instancesFile, "image id \(imageID) (used by refs in \(refsFile)) is not in \"images\"")
        }
        let imagePath = imageDir + "/" + info.fileName
        guard FileManager.default.fileExists(atPath: imagePath) else { throw SampleSkip(file: imagePath, "no such file") }
        let sents = sentences[imageID] ?? []
        guard !sents.isEmpty else { throw SampleSkip(file: refsFile, "image id \(imageID) has no referring sentences") }

        var rng = DataRNG.make(seed: seed, subset: subset, index: index)
        let questions = Allocation.sampleAndAllocate(sents, options: options, rng: &rng)
        let conversations = Allocation.conversations(questions.map { $0.map(\.text) }, options: options, rng: &rng)

        var masks: [Int: RLE] = [:]
        var targets: [SampleTarget] = []
        for s in questions.joined() {
            if masks[s.annID] == nil {
                guard let seg = segmentations[s.annID] else {
                    throw SampleSkip(file: instancesFile, "annotation \(s.annID) (ref \(s.refID)) is not in \"annotations\"")
                }
                do {
                    let m = try seg.get().mask(height: info.height, width: info.width, item: "annotation \(s.annID)")
                    masks[s.annID] = RLE(encoding: m)
                } catch let e as MaskError {
                    throw SampleSkip(file: instancesFile, "bad segmentation: \(e.description)")
                }
            }
            let sent = s.sentID.map { " sent \($0)" } ?? ""
            targets.append(SampleTarget(mask: masks[s.annID]!, name: s.text, provenance: "ref \(s.refID)\(sent) / ann \(s.annID)"))
        }
        return DataSample(dataset: dataset, subset: subset, index: index, imagePath: imagePath, height: info.height,
                          width: info.width, conversations: conversations, targets: targets,
                          source: "\(refsFile) image \(imageID)")
    }
}

extension ReferSegReader {
    /// One image of the split as the reference's ValDataset reads it for validate(): every sentence of every ref of
    /// the image (refs in file order, sentences in ref order), stripped and lowercased, each with its ref's mask.
    public func evalItem(_ index: Int) throws -> (imagePath: String, height: Int, width: Int, sentences: [SampleTarget]) {
        guard index >= 0, index < imageIDs.count else {
            throw SampleSkip(file: refsFile, "index \(index) out of range 0..<\(imageIDs.count)")
        }
        let imageID = imageIDs[index]
        guard let info = images[imageID] else {
            throw SampleSkip(file: instancesFile, "image id \(imageID) (used by refs in \(refsFile)) is not in \"images\"")
        }
        let sents = sentences[imageID] ?? []
        guard !sents.isEmpty else { throw SampleSkip(file: refsFile, "image id \(imageID) has no referring sentences") }
        var masks: [Int: RLE] = [:]
        var out: [SampleTarget] = []
        for s in sents {
            if masks[s.annID] == nil {
                guard let seg = segmentations[s.annID] else {
                    throw SampleSkip(file: instancesFile, "annotation \(s.annID) (ref \(s.refID)) is not in \"annotations\"")
                }
                do {
                    masks[s.annID] = RLE(encoding: try seg.get().mask(height: info.height, width: info.width, item: "annotation \(s.annID)"))
                } catch let e as MaskError {
                    throw SampleSkip(file: instancesFile, "bad segmentation: \(e.description)")
                }
            }
            let text = s.text.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
            let sent = s.sentID.map { " sent \($0)" } ?? ""
            out.append(SampleTarget(mask: masks[s.annID]!, name: text, provenance: "ref \(s.refID)\(sent) / ann \(s.annID)"))
        }
        return (imageDir + "/" + info.fileName, info.height, info.width, out)
    }
}

/// Small helpers for `JSONSerialization` values.
enum CocoJSON {
    static func int(_ v: Any?) -> Int? {
        guard let v = v else { return nil }
        return COCOSegmentation.number(v).flatMap(COCOSegmentation.exactInt)
    }

    static func typeName(_ v: Any) -> String { COCOSegmentation.typeName(v) }

}
