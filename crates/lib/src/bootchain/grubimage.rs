//! What a GRUB image built by `grub-mkimage` carries besides GRUB's kernel: the module
//! list (`mimg` header, then objects: ELF modules, a memdisk, the early config, the
//! prefix). The i386-pc core image compresses that list with raw LZMA behind a small
//! decompressor; the x86_64-efi image carries it uncompressed in its `mods` section.
//! Reading it back tells which boot partition an installed image looks for (pure code).

use super::ChainError;

/// `GRUB_MODULE_MAGIC`, as the bytes appear in an image (`mimg`).
const MODULE_MAGIC: &[u8; 4] = b"mimg";
/// Object types of the module list (`include/grub/kernel.h`).
const OBJ_CONFIG: u32 = 2;
const OBJ_PREFIX: u32 = 3;

/// Offsets inside the i386-pc decompressor (`include/grub/offsets.h`): the compressed and
/// uncompressed sizes of the payload that follows it.
const I386_PC_COMPRESSED_SIZE: usize = 0x08;
const I386_PC_UNCOMPRESSED_SIZE: usize = 0x0c;
/// LZMA parameters `grub-mkimage` compresses the i386-pc payload with: lc=3, lp=0, pb=2
/// (properties byte `(pb * 5 + lp) * 9 + lc`) and a 64 KiB dictionary.
const LZMA_PROPS: u8 = (2 * 5) * 9 + 3;
const LZMA_DICT: u32 = 1 << 16;

/// The objects of an image's module list that say where GRUB looks for its files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Embedded {
    /// The early config (`grub-mkimage -c`), trailing NULs removed.
    pub config: Option<String>,
    /// The prefix (`grub-mkimage -p`).
    pub prefix: Option<String>,
    /// Number of ELF modules built in.
    pub modules: usize,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Walks the objects between `start` and `end`; `None` unless they tile the range exactly.
fn walk(b: &[u8], start: usize, end: usize) -> Option<Embedded> {
    let mut out = Embedded::default();
    let mut p = start;
    while p < end {
        let kind = le32(b, p)?;
        let size = le32(b, p + 4)? as usize;
        if size < 8 || p + size > end {
            return None;
        }
        let body = &b[p + 8..p + size];
        match kind {
            0 => out.modules += 1,
            OBJ_CONFIG => out.config = Some(text(body)),
            OBJ_PREFIX => out.prefix = Some(text(body)),
            _ => {}
        }
        p += size;
    }
    (p == end).then_some(out)
}

/// Finds and reads the module list in an uncompressed payload (an EFI image, or an i386-pc
/// core image after [`i386_pc_payload`]). The magic also occurs in GRUB's code, so every
/// occurrence is tried and only a header whose objects tile its declared size counts.
pub fn embedded(payload: &[u8]) -> Option<Embedded> {
    let mut from = 0;
    while let Some(rel) = payload[from..].windows(4).position(|w| w == MODULE_MAGIC) {
        let at = from + rel;
        from = at + 1;
        // 32-bit header: magic, offset (12), size.
        if let (Some(12), Some(size)) = (le32(payload, at + 4), le32(payload, at + 8)) {
            let end = at.checked_add(size as usize);
            if let Some(e) = end.filter(|&e| e <= payload.len()) {
                if let Some(found) = walk(payload, at + 12, e) {
                    return Some(found);
                }
            }
        }
        // 64-bit header: magic, padding, offset (24), size.
        if let (Some(0), Some(24), Some(size)) = (
            le32(payload, at + 4),
            le64(payload, at + 8),
            le64(payload, at + 16),
        ) {
            let end = usize::try_from(size).ok().and_then(|s| at.checked_add(s));
            if let Some(e) = end.filter(|&e| e <= payload.len()) {
                if let Some(found) = walk(payload, at + 24, e) {
                    return Some(found);
                }
            }
        }
    }
    None
}

/// The uncompressed payload of an i386-pc core image: `core` is the image from its first
/// sector (`diskboot.img`), `decompressor_len` the size of the installed GRUB's
/// `lzma_decompress.img`.
pub fn i386_pc_payload(core: &[u8], decompressor_len: usize) -> Result<Vec<u8>, ChainError> {
    use std::io::Read;
    let bad = |why: String| ChainError::BadCoreImage(why);
    let dec = core
        .get(512..)
        .ok_or_else(|| bad(format!("{} bytes is shorter than one sector", core.len())))?;
    let comp = le32(dec, I386_PC_COMPRESSED_SIZE).ok_or_else(|| bad("no decompressor".into()))?;
    let uncomp =
        le32(dec, I386_PC_UNCOMPRESSED_SIZE).ok_or_else(|| bad("no decompressor".into()))?;
    let data = dec
        .get(decompressor_len..decompressor_len + comp as usize)
        .ok_or_else(|| {
            bad(format!(
                "the compressed payload ({comp} bytes after a {decompressor_len}-byte decompressor) \
                 runs past the image's {} bytes",
                core.len()
            ))
        })?;
    // An "LZMA alone" header in front of the raw stream: properties, dictionary size and
    // the uncompressed size (GRUB writes no end marker, so the size must be known).
    let mut stream = Vec::with_capacity(13 + data.len());
    stream.push(LZMA_PROPS);
    stream.extend_from_slice(&LZMA_DICT.to_le_bytes());
    stream.extend_from_slice(&u64::from(uncomp).to_le_bytes());
    stream.extend_from_slice(data);
    let decoder = liblzma::stream::Stream::new_lzma_decoder(64 << 20)
        .map_err(|e| ChainError::Lzma(e.into()))?;
    let mut out = Vec::with_capacity(uncomp as usize);
    liblzma::read::XzDecoder::new_stream(stream.as_slice(), decoder)
        .read_to_end(&mut out)
        .map_err(ChainError::Lzma)?;
    if out.len() != uncomp as usize {
        return Err(bad(format!(
            "decompressed {} bytes, the decompressor header says {uncomp}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut v = kind.to_le_bytes().to_vec();
        let len = (8 + body.len()).div_ceil(4) * 4;
        v.extend_from_slice(&(len as u32).to_le_bytes());
        v.extend_from_slice(body);
        v.resize(len, 0);
        v
    }

    fn list32(objs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = objs.concat();
        let mut v = b"mimg".to_vec();
        v.extend_from_slice(&12u32.to_le_bytes());
        v.extend_from_slice(&((12 + body.len()) as u32).to_le_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn finds_config_after_false_magic() {
        // GRUB's code contains the magic too (as an operand); it must be skipped.
        let mut payload = b"code mimg\x55\x66\x77\x88\x99\xaa\xbb\xcc more code".to_vec();
        payload.extend(list32(&[
            obj(0, &[0x7f, b'E', b'L', b'F']),
            obj(0, &[1, 2, 3]),
            obj(
                OBJ_CONFIG,
                b"search.fs_uuid 1234 root\nset prefix=($root)/grub\n\0",
            ),
            obj(OBJ_PREFIX, b"/grub\0"),
        ]));
        let e = embedded(&payload).expect("module list");
        assert_eq!(e.modules, 2);
        assert_eq!(
            e.config.as_deref(),
            Some("search.fs_uuid 1234 root\nset prefix=($root)/grub\n")
        );
        assert_eq!(e.prefix.as_deref(), Some("/grub"));
    }

    #[test]
    fn sixty_four_bit_header_of_efi_images() {
        let body = [obj(OBJ_PREFIX, b"/EFI/debian\0"), obj(1, &[0; 16])].concat();
        let mut payload = vec![0xAB; 40];
        payload.extend_from_slice(b"mimg");
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&24u64.to_le_bytes());
        payload.extend_from_slice(&((24 + body.len()) as u64).to_le_bytes());
        payload.extend(body);
        payload.extend_from_slice(&[0xCD; 64]); // other sections follow in a PE image
        let e = embedded(&payload).expect("module list");
        assert_eq!(e.prefix.as_deref(), Some("/EFI/debian"));
        assert_eq!(e.config, None);
    }

    #[test]
    fn truncated_list_is_not_accepted() {
        let mut payload = list32(&[obj(OBJ_CONFIG, b"x\0")]);
        payload.truncate(payload.len() - 2);
        assert_eq!(embedded(&payload), None);
        assert_eq!(embedded(b"no module list here"), None);
    }

    #[test]
    fn short_core_image_is_an_error() {
        let e = i386_pc_payload(&[0u8; 100], 2848)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("shorter than one sector"));
        let mut core = vec![0u8; 600];
        core[512 + 8..512 + 12].copy_from_slice(&10_000u32.to_le_bytes());
        let e = i386_pc_payload(&core, 64).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("runs past"));
    }
}
