// SPDX-License-Identifier: Apache-2.0
// Memory mapped by system calls, rebuilt from the BPF region events.
#include "tracer/mapped_regions.h"

#include <algorithm>
#include <iterator>

#include "tracer/bpf_codes.h"

namespace memtrail::tracer {

bool MappedRegions::apply(const memtrail_region_event& event) {
  if (event.type == MEMTRAIL_REGION_EXEC) {
    forget_process(event.tgid);
    return true;
  }
  Process& process = processes_[event.tgid];
  switch (event.type) {
    case MEMTRAIL_REGION_MAP:
      map(process, event.tgid, event.address, page_round(event.length), event.site_id,
          model::AllocationKind::kMmap, event.timestamp_ns);
      break;
    case MEMTRAIL_REGION_UNMAP:
      unmap(process, event.address, event.address + page_round(event.length), nullptr);
      break;
    case MEMTRAIL_REGION_REMAP_BEGIN: {
      auto& remap = process.remaps[event.tid];
      remap.old_address = event.address;
      remap.old_length = page_round(event.length);
      remap.pieces.clear();
      unmap(process, event.address, event.address + page_round(event.length), &remap.pieces);
      break;
    }
    case MEMTRAIL_REGION_REMAP_END:
      finish_remap(process, event);
      break;
    case MEMTRAIL_REGION_BRK: {
      uint64_t old_break = event.address, new_break = event.length;
      process.break_growth += static_cast<int64_t>(new_break - old_break);
      if (event.flags & MEMTRAIL_REGION_IN_ALLOCATOR) break;  // the allocator's own heap
      if (new_break > old_break) {
        map(process, event.tgid, old_break, new_break - old_break, event.site_id,
            model::AllocationKind::kBrk, event.timestamp_ns);
      } else {
        unmap(process, new_break, old_break, nullptr);
      }
      break;
    }
    default:
      break;
  }
  return false;
}

void MappedRegions::map(Process& process, uint32_t pid, uint64_t start, uint64_t length,
                        int32_t site_id, model::AllocationKind kind, uint64_t timestamp_ns) {
  if (length == 0) return;
  unmap(process, start, start + length, nullptr);  // MAP_FIXED replaces what was there
  if (mappings_.size() >= max_mappings_) {
    ++drops_[pid];
    return;
  }
  uint64_t id = next_mapping_++;
  mappings_[id] = {pid, site_id, kind, start, timestamp_ns, length, 0};
  ++mapped_total_;
  insert_piece(process, start, start + length, id);
}

void MappedRegions::insert_piece(Process& process, uint64_t start, uint64_t end, uint64_t mapping) {
  if (start < end) process.pieces[start] = {end, mapping};
}

void MappedRegions::release(uint64_t mapping, uint64_t bytes, bool held) {
  auto it = mappings_.find(mapping);
  if (it == mappings_.end()) return;
  it->second.mapped_bytes -= std::min(bytes, it->second.mapped_bytes);
  if (held) {
    ++it->second.held;
  } else if (it->second.mapped_bytes == 0 && it->second.held == 0) {
    mappings_.erase(it);
    ++released_total_;
  }
}

void MappedRegions::unmap(Process& process, uint64_t start, uint64_t end,
                          std::vector<HeldPiece>* taken) {
  if (start >= end) return;
  auto& pieces = process.pieces;
  // The first piece that may overlap: the one starting at or before `start`, if it reaches in.
  auto it = pieces.upper_bound(start);
  if (it != pieces.begin() && std::prev(it)->second.end > start) --it;
  while (it != pieces.end() && it->first < end) {
    uint64_t piece_start = it->first;
    Piece piece = it->second;
    it = pieces.erase(it);
    uint64_t cut_start = std::max(piece_start, start), cut_end = std::min(piece.end, end);
    // What lies outside [start, end) stays mapped: a munmap in the middle leaves two pieces.
    insert_piece(process, piece_start, cut_start, piece.mapping);
    if (piece.end > end) it = pieces.emplace(end, Piece{piece.end, piece.mapping}).first;
    if (taken) taken->push_back({cut_start - start, cut_end - cut_start, piece.mapping});
    release(piece.mapping, cut_end - cut_start, taken != nullptr);
  }
}

void MappedRegions::finish_remap(Process& process, const memtrail_region_event& event) {
  auto found = process.remaps.find(event.tid);
  if (found == process.remaps.end()) return;
  Process::Remap remap = std::move(found->second);
  process.remaps.erase(found);
  uint64_t new_address = event.address, new_length = page_round(event.length);
  bool moved = new_address != 0;
  bool keep_old = !moved || (event.flags & MEMTRAIL_REGION_KEEP_OLD);
  // A failed mremap left the old range as it was; MREMAP_DONTUNMAP leaves it mapped too.
  if (keep_old) {
    for (const auto& held : remap.pieces) {
      uint64_t start = remap.old_address + held.offset;
      insert_piece(process, start, start + held.length, held.mapping);
      auto it = mappings_.find(held.mapping);
      if (it != mappings_.end()) it->second.mapped_bytes += held.length;
    }
  }
  if (moved) {
    // Whatever was at the destination was replaced (MREMAP_FIXED), except what just left it.
    unmap(process, new_address, new_address + new_length, nullptr);
    const HeldPiece* last = nullptr;
    for (const auto& held : remap.pieces) {
      if (held.offset >= new_length) continue;  // shrunk away
      uint64_t length = std::min(held.length, new_length - held.offset);
      if (!last || held.offset > last->offset) last = &held;
      auto it = mappings_.find(held.mapping);
      if (it == mappings_.end()) continue;
      if (keep_old) {
        // Both copies count, as two mappings of the one site.
        if (mappings_.size() >= max_mappings_) {
          ++drops_[event.tgid];
          continue;
        }
        Mapping copy = it->second;
        copy.address = new_address + held.offset;
        copy.mapped_bytes = length;
        copy.held = 0;
        uint64_t id = next_mapping_++;
        mappings_[id] = copy;
        insert_piece(process, new_address + held.offset, new_address + held.offset + length, id);
      } else {
        it->second.mapped_bytes += length;
        insert_piece(process, new_address + held.offset, new_address + held.offset + length,
                     held.mapping);
      }
    }
    // Growth belongs to the mapping that ended the old range.
    if (last && !keep_old) {
      uint64_t old_end = last->offset + last->length;
      if (old_end == remap.old_length && new_length > old_end) {
        auto it = mappings_.find(last->mapping);
        if (it != mappings_.end()) {
          it->second.mapped_bytes += new_length - old_end;
          auto piece = process.pieces.find(new_address + last->offset);
          if (piece != process.pieces.end()) piece->second.end = new_address + new_length;
        }
      }
    }
  }
  for (const auto& held : remap.pieces) {
    auto it = mappings_.find(held.mapping);
    if (it == mappings_.end()) continue;
    if (it->second.held > 0) --it->second.held;
    if (it->second.mapped_bytes == 0 && it->second.held == 0) {
      mappings_.erase(it);
      ++released_total_;
    }
  }
}

void MappedRegions::for_each(
    const std::function<void(const model::OutstandingAllocation&)>& visit) const {
  for (const auto& [id, mapping] : mappings_) {
    if (mapping.mapped_bytes == 0) continue;
    visit({mapping.pid, mapping.address, mapping.mapped_bytes, mapping.timestamp_ns,
           mapping.site_id, mapping.kind});
  }
}

uint64_t MappedRegions::forget_process(uint32_t pid) {
  processes_.erase(pid);
  drops_.erase(pid);
  return std::erase_if(mappings_, [pid](const auto& entry) { return entry.second.pid == pid; });
}

int64_t MappedRegions::break_growth(uint32_t pid) const {
  auto it = processes_.find(pid);
  return it == processes_.end() ? 0 : it->second.break_growth;
}

}  // namespace memtrail::tracer
