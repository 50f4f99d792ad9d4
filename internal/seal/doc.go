// Package seal implements Strongroom's sealed file format: a file's bytes encrypted as a
// chunked, authenticated stream that can be decrypted in parallel or at any offset.
//
// # Sealed File Format, version 1
//
// A sealed file (".srs") is a fixed 92-byte header followed by the encrypted chunks of the
// plaintext. All integers are big-endian.
//
//	offset size field
//	0      4    magic "SRSL"
//	4      1    version, 1
//	5      1    algorithm, 1 = AES-256-GCM
//	6      2    reserved, 0
//	8      4    chunk size C: plaintext bytes per chunk, 4096 <= C <= 16 MiB
//	12     16   key id: names the data encryption key (DEK) in the inventory; opaque here
//	28     32   salt: 32 random bytes, fresh for every sealed file
//	60     32   commitment: HMAC-SHA256(Kc, header[0:60])
//
// Keys. The DEK is 32 bytes. For each file two keys are derived with HKDF-SHA256
// (RFC 5869), secret = DEK, salt = the header salt:
//
//	Kp = HKDF(DEK, salt, "strongroom/seal/v1/payload" || 0x00 || context, 32)
//	Kc = HKDF(DEK, salt, "strongroom/seal/v1/commit"  || 0x00 || context, 32)
//
// The context is a string chosen by the caller and not stored in the file; the inventory uses
// "NAME@VERSION/PATH" so that a sealed file swapped for another file of the same model is
// refused. Because the salt differs per file, every file has its own payload key.
//
// Key commitment. AES-GCM alone is not key-committing. A reader first recomputes the
// commitment with Kc and compares it in constant time; a wrong DEK, a wrong context or any
// change to the header is refused before any chunk is decrypted (ErrKey).
//
// Chunks. The plaintext is split into chunks of exactly C bytes; the last chunk holds
// 1..C bytes, or 0 bytes only when the whole plaintext is empty. Chunk i is
//
//	AES-256-GCM-Seal(Kp, nonce_i, P_i, no additional data)    (len(P_i) + 16 bytes)
//	nonce_i = uint88(i) || flag,  flag = 0x01 for the last chunk, else 0x00
//
// This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as age uses
// it: the counter in the nonce detects reordered, duplicated and dropped chunks, and the
// final flag detects truncation at a chunk boundary. The plaintext length is not stored:
// it follows from the file size, and a reader authenticates the last chunk (with the final
// flag) when it opens the file, so Size is trustworthy before any other chunk is read.
//
// Errors name the file and the chunk (or "header") and wrap ErrIntegrity for every
// authentication failure.
package seal
