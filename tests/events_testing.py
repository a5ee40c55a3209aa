"""Reading TensorBoard event files back, for tests (TensorBoard itself is not a dependency)."""

import glob
import os
import struct

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c


def read_events(logdir):
  """Every Event in the TFRecord files under `logdir` (length, crc, payload, crc), CRC-checked."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      header = data[offset:offset + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
      assert header_crc == masked_crc32c(header)
      payload = data[offset + 12:offset + 12 + length]
      (payload_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
      assert payload_crc == masked_crc32c(payload)
      events.append(event_pb2.Event.FromString(payload))
      offset += 16 + length
  return events
