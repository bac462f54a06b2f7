"""Printernizer's own names, mapped onto the contract: its printer types, its
exception classes (by class name: the SDK never imports Printernizer), its
modules as components, and Bambu Lab's failure states. docs/sdk.md
("Printernizer's values") lists each with what it becomes.

A name not listed here becomes OTHER and is counted by the client as
`unplaced` (never kept, never sent)."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from ._generated.enums import Component, ErrorType, JobFailureReason, PrinterType

BAMBU_FAILURE_REASONS: Mapping[str, JobFailureReason] = {
    "PAUSED_NOZZLE_TEMPERATURE_MALFUNCTION": JobFailureReason.PRINTER_ERROR,
    "PAUSED_HEAT_BED_TEMPERATURE_MALFUNCTION": JobFailureReason.PRINTER_ERROR,
    "PAUSED_CHAMBER_TEMPERATURE_CONTROL_ERROR": JobFailureReason.PRINTER_ERROR,
    "PAUSED_SKIPPED_STEP": JobFailureReason.PRINTER_ERROR,
    "PAUSED_AMS_LOST": JobFailureReason.PRINTER_ERROR,
    "PAUSED_LOW_FAN_SPEED_HEAT_BREAK": JobFailureReason.PRINTER_ERROR,
    "PAUSED_NOZZLE_FILAMENT_COVERED_DETECTED": JobFailureReason.PRINTER_ERROR,
    "PAUSED_CUTTER_ERROR": JobFailureReason.PRINTER_ERROR,
    "PAUSED_FIRST_LAYER_ERROR": JobFailureReason.PRINTER_ERROR,
    "PAUSED_NOZZLE_CLOG": JobFailureReason.PRINTER_ERROR,
    "PAUSED_FILAMENT_RUNOUT": JobFailureReason.FILAMENT_RUNOUT,
}


PRINTERNIZER_PRINTER_TYPES: Mapping[str, PrinterType] = {
    "bambu_lab": PrinterType.BAMBU_LAB,
    "bambu": PrinterType.BAMBU_LAB,
    "prusa_core": PrinterType.PRUSA,
    "prusa": PrinterType.PRUSA,
    "prusalink": PrinterType.PRUSA,
    "octoprint": PrinterType.OCTOPRINT,
    "klipper": PrinterType.KLIPPER,
    "moonraker": PrinterType.KLIPPER,
    "unknown": PrinterType.UNKNOWN,
    "": PrinterType.UNKNOWN,
}


def printer_type_for(name: object) -> tuple[PrinterType, bool]:
    """(the contract's family, placed) for Printernizer's printer type: a
    string or a str Enum (`PrinterType.BAMBU_LAB.value == "bambu_lab"`). None
    or "unknown" -> UNKNOWN; a name not listed -> OTHER with placed=False
    (the client counts it; the name itself is never kept)."""
    if name is None:
        return PrinterType.UNKNOWN, True
    text = str(getattr(name, "value", name)).strip().lower()
    found = PRINTERNIZER_PRINTER_TYPES.get(text)
    return (found, True) if found is not None else (PrinterType.OTHER, False)


PRINTERNIZER_ERROR_TYPES: Mapping[str, ErrorType] = {
    # src/utils/errors.py
    "PrinternizerError": ErrorType.INTERNAL,
    "PrinterNotFoundError": ErrorType.NOT_FOUND,
    "PrinterConnectionError": ErrorType.PRINTER_OFFLINE,
    "PrinterBusyError": ErrorType.CONFLICT,
    "PrinterAlreadyExistsError": ErrorType.CONFLICT,
    "PrinterDisconnectedError": ErrorType.CONNECTION_LOST,
    "JobNotFoundError": ErrorType.NOT_FOUND,
    "JobAlreadyStartedError": ErrorType.INVALID_STATE,
    "JobInvalidStatusError": ErrorType.INVALID_STATE,
    "FileNotFoundError": ErrorType.FILE_NOT_FOUND,  # Printernizer's own (not an OSError)
    "FileDownloadError": ErrorType.DOWNLOAD_FAILED,
    "InvalidFileTypeError": ErrorType.UNSUPPORTED_FILE_TYPE,
    "FileProcessingError": ErrorType.FILE_PROCESSING,
    "MaterialNotFoundError": ErrorType.NOT_FOUND,
    "InsufficientMaterialError": ErrorType.CONFLICT,
    "LibraryItemNotFoundError": ErrorType.NOT_FOUND,
    "GeneratorError": ErrorType.FILE_PROCESSING,
    "ValidationError": ErrorType.VALIDATION,
    "ServiceUnavailableError": ErrorType.SERVICE_UNAVAILABLE,
    "ConfigurationError": ErrorType.CONFIGURATION,
    "DatabaseError": ErrorType.DATABASE,
    "FileOperationError": ErrorType.FILE_OPERATION,
    "AuthenticationError": ErrorType.AUTHENTICATION_FAILED,
    "AuthorizationError": ErrorType.PERMISSION_DENIED,
    "ResourceConflictError": ErrorType.CONFLICT,
    "NotFoundError": ErrorType.NOT_FOUND,
    # src/printers/download_strategies/base.py
    "DownloadError": ErrorType.DOWNLOAD_FAILED,
    "FatalDownloadError": ErrorType.DOWNLOAD_FAILED,
    "RetryableDownloadError": ErrorType.DOWNLOAD_FAILED,
}


PRINTERNIZER_COMPONENTS: Mapping[str, Component] = {
    "src.printers": Component.PRINTER_SERVICE,
    "src.services.printer_service": Component.PRINTER_SERVICE,
    "src.services.printer_connection_service": Component.PRINTER_SERVICE,
    "src.services.printer_monitoring_service": Component.PRINTER_SERVICE,
    "src.services.printer_control_service": Component.PRINTER_SERVICE,
    "src.services.discovery_service": Component.PRINTER_SERVICE,
    "src.services.bambu_ftp_service": Component.PRINTER_SERVICE,
    "src.services.bambu_service": Component.PRINTER_SERVICE,
    "src.services.prusa_service": Component.PRINTER_SERVICE,
    "src.services.octoprint_sockjs_client": Component.PRINTER_SERVICE,
    "src.services.job_service": Component.JOB_SERVICE,
    "src.services.file_service": Component.FILE_SERVICE,
    "src.services.file_download_service": Component.FILE_SERVICE,
    "src.services.file_upload_service": Component.FILE_SERVICE,
    "src.services.file_discovery_service": Component.FILE_SERVICE,
    "src.services.file_metadata_service": Component.FILE_SERVICE,
    "src.services.file_thumbnail_service": Component.FILE_SERVICE,
    "src.services.thumbnail_service": Component.FILE_SERVICE,
    "src.services.preview_render_service": Component.FILE_SERVICE,
    "src.services.stl_analyzer": Component.FILE_SERVICE,
    "src.services.threemf_analyzer": Component.FILE_SERVICE,
    "src.services.bambu_parser": Component.FILE_SERVICE,
    "src.services.file_role_classifier": Component.FILE_SERVICE,
    "src.utils.gcode_analyzer": Component.FILE_SERVICE,
    "src.utils.gcode_metadata": Component.FILE_SERVICE,
    "src.services.library_service": Component.LIBRARY_SERVICE,
    "src.services.camera_snapshot_service": Component.CAMERA_SERVICE,
    "src.services.external_camera_service": Component.CAMERA_SERVICE,
    "src.services.material_service": Component.MATERIAL_SERVICE,
    "src.services.filament_colors": Component.MATERIAL_SERVICE,
    "src.services.migration_service": Component.DATABASE,
    "src.database": Component.DATABASE,
    "src.services.event_service": Component.SCHEDULER,
    "src.api.routers.websocket": Component.WEBSOCKET,
    "src.api.routers.errors": Component.FRONTEND,
    "src.api": Component.API,
    "src.utils.errors": Component.API,  # the global exception handlers
    "src.services.slicer_service": Component.SLICER,
    "src.services.slicing_queue": Component.SLICER,
    "src.services.slicer_detector": Component.SLICER,
    "src.services.slicer_backends": Component.SLICER,
    "src.services.timelapse_service": Component.TIMELAPSE,
    "src.services.notification_service": Component.NOTIFICATIONS,
    "src.services.notification_adapters": Component.NOTIFICATIONS,
    "src.services.generator_service": Component.MODEL_GENERATOR,
    "src.services.order_service": Component.BUSINESS,
    "src.services.business_service": Component.BUSINESS,
    "src.services.analytics_service": Component.BUSINESS,
    "src.services.idea_service": Component.IDEAS,
    "src.services.url_parser_service": Component.IDEAS,
    "src.services.trending_service": Component.IDEAS,
    "src.services.file_watcher_service": Component.WATCH_FOLDERS,
    "src.services.watch_folder_db_service": Component.WATCH_FOLDERS,
    "src.services.config_service": Component.CONFIGURATION,
    "src.utils.config": Component.CONFIGURATION,
    "src.services.search_service": Component.SEARCH,
    "src.services.monitoring_service": Component.SYSTEM_HEALTH,
    "src.services.log_service": Component.SYSTEM_HEALTH,
    "src.utils.system_check": Component.SYSTEM_HEALTH,
}


def component_for_module(module: str | None) -> tuple[Component, bool]:
    """(Component, placed) for a module path: the longest listed prefix (on
    whole dotted parts) wins; an unlisted module -> OTHER, placed=False."""
    if not module:
        return Component.OTHER, False
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = PRINTERNIZER_COMPONENTS.get(".".join(parts[:end]))
        if found is not None:
            return found, True
    return Component.OTHER, False


def component_for_exception(exc: BaseException) -> tuple[Component, bool]:
    """Where an exception came from: the innermost traceback frame in
    Printernizer's own code (`src.` modules). Reads module names only, never
    file paths, locals or messages."""
    tb: TracebackType | None = exc.__traceback__
    module = None
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__")
        if isinstance(name, str) and (name == "src" or name.startswith("src.")):
            module = name
        tb = tb.tb_next
    return component_for_module(module)
