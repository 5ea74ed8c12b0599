"""M-Bus (EN 13757-2/-3) smart water meters over a serial line."""
